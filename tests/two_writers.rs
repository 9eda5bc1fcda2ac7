//! Two writers, one project: the window (a `Workspace` saving in the
//! background, as the GUI does) and `spr` commands in a terminal, on the
//! same stage files; two runs of one stage at once; and processes killed
//! with SIGKILL in the middle of a write.

mod common;
use common::{copy_dir, demo_dir, spr};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spr_workbench::core::project::{self, files, lock, CandidateRecord, ScoreRecord};
use spr_workbench::core::workspace::{Edit, Workspace};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-model");

fn demo_copy(tmp: &Path) -> PathBuf {
    let root = tmp.join("demo");
    copy_dir(&demo_dir(), &root);
    root
}

fn spawn_spr(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spr"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spr starts")
}

fn candidates(dir: &Path) -> Vec<CandidateRecord> {
    let (records, errors) = project::read_jsonl(&dir.join(files::CANDIDATES)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    records
}

fn settle(ws: &mut Workspace) {
    while ws.pending_writes() > 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ws.take_write_errors(), Vec::<String>::new());
    ws.reload_changed().unwrap();
}

#[test]
fn window_edits_while_spr_generate_appends_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_copy(tmp.path());
    let before = candidates(&dir).len();
    let mut ws = Workspace::open(&dir).unwrap();
    ws.write_in_background();
    // 12 queries in blocks of 2: six appends spread over the run.
    let p = dir.to_str().unwrap();
    let mut child = spawn_spr(&[
        "generate",
        "--project",
        p,
        "--model",
        MODEL,
        "--limit",
        "12",
        "--batch",
        "2",
        "--samples",
        "1",
        "--prompts",
        "describe",
    ]);
    // Meanwhile the window adds candidates and edits texts, and reloads
    // what changed about once every ten edits, as the app does.
    let queries: Vec<String> = ws.regions.iter().map(|r| r.id.clone()).collect();
    let mut added = Vec::new();
    let mut edited = Vec::new();
    let mut k = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let q = &queries[k % queries.len()];
        if k % 2 == 0 {
            let c = ws.manual_candidate(q, &format!("window edit {k}"));
            added.push(c.id.clone());
            ws.apply(Edit::AddCandidate(c)).unwrap();
        } else {
            let c = ws.candidates[k % before].clone();
            let after = format!("{} (edited {k})", c.text);
            ws.apply(Edit::SetText {
                id: c.id.clone(),
                before: c.text,
                after: after.clone(),
            })
            .unwrap();
            edited.push((c.id, after));
        }
        if k % 10 == 9 {
            settle(&mut ws);
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(15));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generate: 12 candidates"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(k >= 10, "the window made only {k} edits during the run");
    settle(&mut ws);

    let on_disk = candidates(&dir);
    let generated = on_disk.iter().filter(|c| c.generation.is_some()).count();
    assert_eq!(generated, 12, "every generated candidate is on disk");
    assert_eq!(on_disk.len(), before + 12 + added.len());
    let text_of = |id: &str| on_disk.iter().find(|c| c.id == id).map(|c| c.text.clone());
    for id in &added {
        assert!(text_of(id).is_some(), "the window's candidate {id} is lost");
    }
    // The last edit of each edited candidate is what is on disk.
    let mut last = std::collections::HashMap::new();
    for (id, text) in &edited {
        last.insert(id.clone(), text.clone());
    }
    for (id, text) in &last {
        assert_eq!(text_of(id).as_ref(), Some(text), "edit of {id} lost");
    }
    // The window shows what is on disk.
    let mut shown: Vec<(String, String)> = ws
        .candidates
        .iter()
        .map(|c| (c.id.clone(), c.text.clone()))
        .collect();
    let mut disk: Vec<(String, String)> = on_disk
        .iter()
        .map(|c| (c.id.clone(), c.text.clone()))
        .collect();
    shown.sort();
    disk.sort();
    assert_eq!(shown, disk);
    // Scores follow: the window scored its own candidates.
    let (scores, _) = project::read_jsonl::<ScoreRecord>(&dir.join(files::SCORES)).unwrap();
    for id in &added {
        assert!(
            scores.iter().any(|s| &s.candidate_id == id),
            "score of {id}"
        );
    }
}

/// The pids waiting for a lock on `lock_file` (Linux's /proc/locks
/// lists blocked requests with `->`).
fn waiting_on(lock_file: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(lock_file) else {
        return Vec::new();
    };
    let inode = format!(":{}", meta.ino());
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("->"))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // "1: -> FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
            let dev_inode = fields.get(6)?;
            dev_inode
                .ends_with(&inode)
                .then(|| fields.get(5)?.parse().ok())?
        })
        .collect()
}

#[test]
fn spr_score_scores_candidates_added_or_edited_while_it_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_copy(tmp.path());
    let scores_path = dir.join(files::SCORES);
    let mut ws = Workspace::open(&dir).unwrap();
    let q = ws.regions[0].id.clone();
    let first = ws.candidates[0].clone();
    let text = ws.candidates[ws.candidates_of(&q)[0]].text.clone();
    let new = ws.manual_candidate(&q, &text);
    // Hold the scores' write lock, so that `spr score` finishes scoring
    // and then waits to write; change the candidates meanwhile.
    let held = lock::write_lock(&scores_path).unwrap();
    let child = spawn_spr(&["score", "--project", dir.to_str().unwrap()]);
    let lock_file = dir.join(lock::LOCK_DIR).join("scores.jsonl.write");
    let start = Instant::now();
    if fs::read_to_string("/proc/locks").is_ok() {
        while !waiting_on(&lock_file).contains(&child.id()) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "spr score never waited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        // No lock table to watch (not Linux, or a sandbox without it):
        // give the scoring ample time to reach its write.
        std::thread::sleep(Duration::from_secs(30));
    }
    // (The window's own saves wait for the lock too: write candidates only.)
    let path = dir.join(files::CANDIDATES);
    project::append_jsonl(
        &path,
        &project::encode_jsonl(&path, std::slice::from_ref(&new)).unwrap(),
    )
    .unwrap();
    let mut all = candidates(&dir);
    all[0].text = "nothing here any more".into();
    project::write_jsonl(&path, &all).unwrap();
    drop(held);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("note: candidates.jsonl changed while scoring: 2 candidate(s) added or edited meanwhile were scored too, 0 removed"),
        "{stdout}"
    );
    let (scores, _) = project::read_jsonl::<ScoreRecord>(&scores_path).unwrap();
    assert_eq!(scores.len(), all.len());
    let of = |id: &str| scores.iter().find(|s| s.candidate_id == id).unwrap();
    // The new candidate copies a good description: scored as such, with
    // CLIP's semantic score; the emptied one has no box left.
    assert!(of(&new.id).localization > 0.5);
    assert!(of(&new.id).semantic.is_some());
    assert_eq!(of(&first.id).localization, 0.0);
    settle(&mut ws);
    assert_eq!(ws.scores.len(), all.len(), "the window reloads the scores");
}

#[test]
fn a_second_spr_score_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_copy(tmp.path());
    let p = dir.to_str().unwrap();
    let scores_path = dir.join(files::SCORES);
    let original = fs::read(&scores_path).unwrap();

    // Held by a process we know (this test): refused, file untouched.
    let held = lock::job_lock(&scores_path, "spr score (held by the test)").unwrap();
    let out = spr(&["score", "--project", p]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "scores.jsonl is being written by `spr score (held by the test)` (pid {}, since ",
            std::process::id()
        )) && stderr.contains("wait for it to end, or stop it"),
        "{stderr}"
    );
    assert_eq!(fs::read(&scores_path).unwrap(), original);
    drop(held);

    // Two at once: each either scores or is refused naming the other; the
    // file is what one run writes.
    let a = spawn_spr(&["score", "--project", p]);
    let b = spawn_spr(&["score", "--project", p]);
    let (ida, idb) = (a.id(), b.id());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert!(won >= 1, "neither ran");
    for (o, other) in outs.iter().zip([idb, ida]) {
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                e.contains("scores.jsonl is being written by `spr score")
                    && e.contains(&format!("(pid {other}, since")),
                "{e}"
            );
        }
    }
    let after_race = fs::read(&scores_path).unwrap();
    let out = spr(&["score", "--project", p]);
    assert!(out.status.success());
    assert_eq!(fs::read(&scores_path).unwrap(), after_race);
}

// ---- SIGKILL in the middle of a write ----

/// The file a killed child writes, and how (set only in the child).
const CHILD_FILE: &str = "SPR_KILL_TEST_FILE";
const CHILD_MODE: &str = "SPR_KILL_TEST_MODE";

/// Two large, different versions of a stage file.
fn versions() -> [Vec<u8>; 2] {
    [b'a', b'b'].map(|tag| {
        (0..20_000)
            .map(|i| {
                format!(
                    "{{\"id\":\"{i}\",\"text\":\"{}\"}}\n",
                    (tag as char).to_string().repeat(60)
                )
            })
            .collect::<String>()
            .into_bytes()
    })
}

/// Not a test of its own: the body of the child process the kill test
/// starts (this test binary again, with the variables set), which writes
/// the file in a loop until it is killed. Without them it does nothing.
#[test]
fn kill_test_child() {
    let (Ok(file), Ok(mode)) = (std::env::var(CHILD_FILE), std::env::var(CHILD_MODE)) else {
        return;
    };
    let path = PathBuf::from(file);
    let [a, b] = versions();
    let key = project::MergeKey::of(files::CANDIDATES).unwrap();
    for i in 0u64.. {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        match mode.as_str() {
            "replace" => project::write_atomic(&path, to).unwrap(),
            "merge" => {
                project::merge_write(&path, key, from, to).unwrap();
            }
            _ => {
                let block: String = (0..200)
                    .map(|j| {
                        format!(
                            "{{\"block\":{i},\"j\":{j},\"pad\":\"{}\"}}\n",
                            "x".repeat(100)
                        )
                    })
                    .collect();
                project::append_jsonl(&path, block.as_bytes()).unwrap();
            }
        }
    }
}

fn start_child(mode: &str, file: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_test_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FILE, file)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_mid_write_leaves_the_old_file_or_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b] = versions();
    for mode in ["replace", "merge", "append"] {
        let file = tmp.path().join(format!("{mode}.jsonl"));
        if mode != "append" {
            fs::write(&file, &a).unwrap();
        }
        for round in 0..12u64 {
            let mut child = start_child(mode, &file);
            // Kill at moments spread over many writes.
            std::thread::sleep(Duration::from_millis(40 + round * 37 % 300));
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            let now = fs::read(&file).unwrap_or_default();
            if mode == "append" {
                let (lines, errors) = project::parse_jsonl_plain::<serde_json::Value>(&file, &now);
                // Whole records, and at most a torn last line that
                // readers name and skip and the next append cuts.
                assert!(errors.len() <= 1, "{mode} round {round}: {errors:?}");
                if let Some(e) = errors.first() {
                    assert!(e.message.starts_with("incomplete last line"), "{e}");
                }
                assert!(!lines.is_empty() || round == 0, "{mode} round {round}");
            } else {
                assert!(
                    now == a || now == b,
                    "{mode} round {round}: the file is neither version ({} bytes)",
                    now.len()
                );
            }
        }
        if mode == "append" {
            project::append_jsonl(&file, b"{\"end\":1}\n").unwrap();
            let (_, errors) = project::read_jsonl_plain::<serde_json::Value>(&file).unwrap();
            assert!(errors.is_empty(), "{errors:?}");
        }
        // The temporary files of killed writers are never taken for data.
        let visible: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(visible.iter().all(|n| n.ends_with(".jsonl")), "{visible:?}");
    }
}

#[test]
fn sigkill_of_spr_score_leaves_the_old_scores_or_the_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_copy(tmp.path());
    let p = dir.to_str().unwrap();
    let scores_path = dir.join(files::SCORES);
    // An older scores file: its first ten records.
    let old: Vec<u8> = fs::read_to_string(&scores_path)
        .unwrap()
        .lines()
        .take(10)
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes();
    fs::write(&scores_path, &old).unwrap();
    // The complete new file, from a run left alone (on a second copy).
    let other = demo_copy(&tmp.path().join("full"));
    assert!(spr(&["score", "--project", other.to_str().unwrap()])
        .status
        .success());
    let new = fs::read(other.join(files::SCORES)).unwrap();
    assert_ne!(old, new, "scoring changes the demo's scores file");
    let start = Instant::now();
    assert!(spr(&["score", "--project", p]).status.success());
    let run = start.elapsed();
    fs::write(&scores_path, &old).unwrap();
    for i in 1..=8u32 {
        let mut child = spawn_spr(&["score", "--project", p]);
        std::thread::sleep(run * i / 8);
        child.kill().unwrap();
        child.wait().unwrap();
        let now = fs::read(&scores_path).unwrap();
        assert!(
            now == old || now == new,
            "kill at {i}/8 of a run: neither version"
        );
        fs::write(&scores_path, &old).unwrap();
    }
}

#[test]
fn spr_regions_keeps_the_regions_drawn_in_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_copy(tmp.path());
    let mut ws = Workspace::open(&dir).unwrap();
    let drawn = ws.manual_region(
        0,
        spr_workbench::core::geometry::Bbox::new(5.0, 5.0, 90.0, 70.0),
    );
    ws.apply(Edit::AddRegion(drawn.clone())).unwrap();
    let out = spr(&["regions", "--project", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(", 1 hand-drawn region(s) kept"), "{stdout}");
    let (regions, _) =
        project::read_jsonl::<project::RegionRecord>(&dir.join(files::REGIONS)).unwrap();
    assert_eq!(regions.last(), Some(&drawn));
    // The sampled ones are the committed file's, byte for byte, before it.
    let sampled = fs::read_to_string(demo_dir().join(files::REGIONS)).unwrap();
    assert!(fs::read_to_string(dir.join(files::REGIONS))
        .unwrap()
        .starts_with(&sampled));
    // And the window sees the file unchanged in what it holds.
    ws.reload_changed().unwrap();
    assert_eq!(ws.regions.len(), regions.len());
}
