//! Rendering benchmark (prints figures; not a timed test).
//!
//! `cargo bench --bench render` draws the same 100k boxes in one frame two
//! ways, in the same run and on the same wgpu adapter:
//! - our instanced pipeline (one draw call through an egui_wgpu callback),
//! - egui's painter (one tessellated rectangle outline per box),
//!
//! and reports the CPU time of the egui pass (building the shapes), the full
//! frame time (tessellation, upload, draw and read-back through
//! egui_kittest's offscreen wgpu renderer) and their ratio. It also times the
//! workbench's first frame on the demo project (open, decode, draw).
//!
//! On a machine without a GPU the adapter is Mesa's lavapipe (CPU), so the
//! "GPU" part runs on the CPU too; the ratio is what to compare.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use spr_workbench::app::canvas::paint_with_painter;
use spr_workbench::app::overlay::{self, BoxInstance, Globals, OverlayResources};
use spr_workbench::app::WorkbenchApp;
use spr_workbench::core::geometry::Bbox;
use spr_workbench::core::rng::SplitMix64;

const BOXES: usize = 100_000;
const FRAMES: usize = 8;
const SIZE: [f32; 2] = [1280.0, 800.0];

fn boxes() -> Arc<Vec<BoxInstance>> {
    let mut rng = SplitMix64::new(3);
    let colors = [
        egui::Color32::GREEN,
        egui::Color32::RED,
        egui::Color32::WHITE,
        egui::Color32::YELLOW,
    ];
    Arc::new(
        (0..BOXES)
            .map(|i| {
                let (w, h) = (rng.range_f32(4.0, 80.0), rng.range_f32(4.0, 80.0));
                let (x, y) = (
                    rng.range_f32(0.0, SIZE[0] - w),
                    rng.range_f32(0.0, SIZE[1] - h),
                );
                BoxInstance::outline([x, y, x + w, y + h], colors[i % 4], 1.5)
            })
            .collect(),
    )
}

struct Timing {
    pass_ms: f64,
    frame_ms: f64,
    /// Per-frame egui pass times (our code and egui's layout, no rasterizer).
    passes: Vec<Duration>,
}

/// (median, worst) in milliseconds.
fn median_worst(times: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

fn measure(ours: bool, instances: Arc<Vec<BoxInstance>>) -> Timing {
    let rs = egui_kittest::wgpu::create_render_state(
        egui_kittest::wgpu::default_wgpu_setup(),
        eframe::egui_wgpu::RendererOptions::PREDICTABLE,
    );
    OverlayResources::install(&rs);
    let renderer = egui_kittest::wgpu::WgpuTestRenderer::from_render_state(rs);
    let mut harness = Harness::builder()
        .with_size(egui::vec2(SIZE[0], SIZE[1]))
        .renderer(renderer)
        .build_ui(move |ui| {
            let rect = ui.max_rect();
            let painter = ui.painter_at(rect);
            if ours {
                let globals = Globals {
                    scale: [1.0, 1.0],
                    offset: [0.0, 0.0],
                    viewport_size: [rect.width(), rect.height()],
                    pixels_per_point: ui.ctx().pixels_per_point(),
                    _pad: 0.0,
                };
                painter.add(overlay::paint_callback(
                    ui.scope_id(),
                    rect,
                    globals,
                    instances.clone(),
                ));
            } else {
                paint_with_painter(
                    &painter,
                    |b: Bbox| {
                        egui::Rect::from_min_max(
                            rect.min + egui::vec2(b.x1, b.y1),
                            rect.min + egui::vec2(b.x2, b.y2),
                        )
                    },
                    &instances,
                );
            }
        });
    // Warm-up frame (pipeline creation, buffer growth).
    harness.step();
    harness.render().expect("render");
    let mut pass = Duration::ZERO;
    let mut frame = Duration::ZERO;
    let mut passes = Vec::new();
    for _ in 0..FRAMES {
        let t = Instant::now();
        harness.step();
        passes.push(t.elapsed());
        pass += t.elapsed();
        let t = Instant::now();
        harness.render().expect("render");
        frame += t.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / FRAMES as f64;
    Timing {
        pass_ms: ms(pass),
        frame_ms: ms(pass) + ms(frame),
        passes,
    }
}

fn first_frame() -> Duration {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    let start = Instant::now();
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .with_accessibility_check(false)
        .wgpu()
        .build_eframe(move |cc| WorkbenchApp::new(cc, demo));
    // The first frame that shows the project (loaded in the background).
    while h.state().ws.is_none() {
        h.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    h.step();
    h.render().expect("render");
    start.elapsed()
}

/// Frame times of the training view while a run writes 10 step events a
/// second into its `events.jsonl` (held by this process as a trainer
/// would hold it): the app's own code and egui's layout, per frame.
fn training_view_frames() -> Vec<Duration> {
    use spr_workbench::core::runs::{
        config::TrainConfig, Event, EventLog, RunDir, RunLock, StartEvent, StepEvent,
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let project = tmp.path().join("demo");
    common::copy_dir(&common::demo_dir(), &project);
    let run = RunDir::new(project.join("runs/live"));
    run.write_config(&TrainConfig::new("model", "."))
        .expect("config");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (run, stop) = (run.clone(), stop.clone());
        std::thread::spawn(move || {
            let _lock = RunLock::acquire(&run).expect("lock");
            let mut log = EventLog::open(&run).expect("events");
            log.write(&Event::Start(StartEvent {
                step: 0,
                pid: std::process::id(),
                time: 0.0,
            }))
            .expect("write");
            let mut step = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                step += 1;
                let e = StepEvent {
                    step,
                    epoch: step as f64 / 100.0,
                    loss: 0.69 / (1.0 + step as f64 * 0.01),
                    rewards_chosen: Some(0.01 * step as f64),
                    rewards_rejected: Some(-0.01 * step as f64),
                    rewards_margins: Some(0.02 * step as f64),
                    rewards_accuracies: Some(0.5),
                    logps_chosen: Some(-20.0),
                    logps_rejected: Some(-21.0),
                    lr: 1e-5,
                    grad_norm: 1.0,
                    tokens_per_s: 3000.0,
                    time: Some(step as f64 * 0.1),
                };
                log.write(&Event::Step(e)).expect("write");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .with_accessibility_check(false)
        .build_eframe(move |cc| WorkbenchApp::new(cc, project));
    while h.state().ws.is_none() {
        h.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    h.state_mut().tab = spr_workbench::app::Tab::Training;
    h.state_mut().training.selected.insert("live".into());
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        h.step();
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(16));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
    let steps = h
        .state()
        .training
        .run("live")
        .map_or(0, |r| r.overview.steps_done);
    println!("training view: {steps} steps written and followed while drawing");
    // The first frames build the view (fonts, plots): steady state after.
    times.split_off(times.len().min(10))
}

fn main() {
    let adapter = {
        let rs = egui_kittest::wgpu::create_render_state(
            egui_kittest::wgpu::default_wgpu_setup(),
            eframe::egui_wgpu::RendererOptions::PREDICTABLE,
        );
        let info = rs.adapter.get_info();
        format!("{} ({:?})", info.name, info.backend)
    };
    println!(
        "adapter: {adapter}; {BOXES} boxes, {FRAMES} frames each, {}×{} px",
        SIZE[0], SIZE[1]
    );
    let instances = boxes();
    let ours = measure(true, instances.clone());
    let egui_painter = measure(false, instances);
    println!(
        "ours (instanced, 1 draw call): egui pass {:.1} ms, full frame {:.1} ms",
        ours.pass_ms, ours.frame_ms
    );
    println!(
        "egui painter (tessellated):    egui pass {:.1} ms, full frame {:.1} ms",
        egui_painter.pass_ms, egui_painter.frame_ms
    );
    println!(
        "ratio painter/ours: egui pass {:.1}×, full frame {:.1}×",
        egui_painter.pass_ms / ours.pass_ms,
        egui_painter.frame_ms / ours.frame_ms
    );
    let (med, worst) = median_worst(&ours.passes);
    println!(
        "ours, 100k boxes, per frame (app code + egui layout, no rasterizer): median {med:.1} ms, worst {worst:.1} ms (target: no frame over 16 ms)"
    );
    let (med, worst) = median_worst(&training_view_frames());
    println!(
        "training view while a run logs 10 events/s, per frame (app code + egui layout, no rasterizer): median {med:.1} ms, worst {worst:.1} ms (target: no frame over 16 ms)"
    );
    let ff = first_frame();
    println!(
        "first frame of the demo project (open + draw): {:.0} ms (target < 1000 ms)",
        ff.as_secs_f64() * 1000.0
    );
}
