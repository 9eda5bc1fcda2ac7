//! Tokenizer for LLaVA-1.5 prompts: `tokenizer.json` through the
//! `tokenizers` crate, the chat prompt, and the expansion of `<image>` into
//! one token per image feature.
//!
//! llava-hf's processor (`processing_llava.py`) replaces each `<image>` in
//! the text by `N` copies (N = (image_size / patch)², 576 for 336 px /
//! patch 14, with the class token dropped) before tokenising, and the model
//! puts one projected image feature at each copy. This module does the same,
//! so token ids match transformers' exactly.
//!
//! Special ids: end of sequence from `generation_config.json`, else the
//! config, else `</s>`; padding from the config, else `<pad>`, else the end
//! of sequence token.

use std::path::{Path, PathBuf};

use super::config::{LlavaConfig, TokenIds};
use super::{ModelError, Result};

/// The placeholder for one image in prompt text.
pub const IMAGE_TOKEN: &str = "<image>";

/// The LLaVA-1.5 prompt for one user turn with one image, ending where the
/// assistant's answer starts (llava-hf's chat template with the generation
/// prompt): `USER: <image>\n{prompt} ASSISTANT:`.
pub fn chat_prompt(prompt: &str) -> String {
    format!("USER: {IMAGE_TOKEN}\n{prompt} ASSISTANT:")
}

/// `tokenizer.json` plus what LLaVA needs around it.
#[derive(Debug, Clone)]
pub struct LlavaTokenizer {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
    image_token_id: u32,
    image_tokens_per_image: usize,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    pad_token_id: u32,
}

impl LlavaTokenizer {
    /// Loads `tokenizer.json` (and `generation_config.json` when present)
    /// from a model folder.
    pub fn from_dir(dir: &Path, cfg: &LlavaConfig) -> Result<Self> {
        let path = dir.join(super::hub::TOKENIZER_FILE);
        let mut tok = Self::from_file(&path, cfg)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            #[derive(serde::Deserialize)]
            struct GenerationFile {
                eos_token_id: Option<TokenIds>,
            }
            let text = std::fs::read_to_string(&gen_path).map_err(|source| ModelError::Io {
                path: gen_path.clone(),
                source,
            })?;
            let g: GenerationFile =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: gen_path.clone(),
                    source,
                })?;
            if let Some(eos) = g.eos_token_id {
                tok.eos_token_ids = eos.to_vec();
            }
        }
        Ok(tok)
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path, cfg: &LlavaConfig) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingPath {
                path: path.to_path_buf(),
                what: "tokenizer",
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let image_token_id = cfg.image_token();
        if let Some(id) = tokenizer.token_to_id(IMAGE_TOKEN) {
            if id != image_token_id {
                return Err(ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    message: format!(
                        "{IMAGE_TOKEN} is token {id} but the model config says image_token_index {image_token_id}"
                    ),
                });
            }
        } else {
            return Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("the vocabulary has no {IMAGE_TOKEN} token"),
            });
        }
        let text = &cfg.text_config;
        let eos_token_ids = text
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .or_else(|| tokenizer.token_to_id("</s>").map(|id| vec![id]))
            .unwrap_or_default();
        let pad_token_id = cfg
            .pad_token_id
            .or(text.pad_token_id)
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .or_else(|| eos_token_ids.first().copied())
            .unwrap_or(0);
        let bos_token_id = text.bos_token_id.or_else(|| tokenizer.token_to_id("<s>"));
        Ok(Self {
            tokenizer,
            path: path.to_path_buf(),
            image_token_id,
            image_tokens_per_image: cfg.image_tokens_per_image(),
            bos_token_id,
            eos_token_ids,
            pad_token_id,
        })
    }

    /// Tokenises `text`, expanding each `<image>` into one token per image
    /// feature. `add_special_tokens` adds what the tokenizer's
    /// post-processor adds (the BOS token for Llama).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let expanded = text.replace(
            IMAGE_TOKEN,
            &IMAGE_TOKEN.repeat(self.image_tokens_per_image),
        );
        let enc = self
            .tokenizer
            .encode(expanded, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of the chat prompt for `prompt` (with BOS), ready for
    /// generation: `USER: <image×N>\n{prompt} ASSISTANT:`.
    pub fn encode_chat(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(&chat_prompt(prompt), true)
    }

    /// Ids of a prompt (with special tokens, `<image>` expanded) followed by
    /// a response (without), as TRL's DPO tokenises pairs, plus the prompt
    /// length: the response's tokens are `ids[prompt_len..]`. With
    /// `append_eos` the first end-of-sequence id closes the response.
    pub fn encode_prompt_response(
        &self,
        prompt: &str,
        response: &str,
        append_eos: bool,
    ) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.encode(prompt, true)?;
        let prompt_len = ids.len();
        ids.extend(self.encode(response, false)?);
        if append_eos {
            if let Some(eos) = self.eos_token_ids.first() {
                ids.push(*eos);
            }
        }
        Ok((ids, prompt_len))
    }

    /// Text of `ids`; `skip_special_tokens` drops BOS/EOS/pad/image tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The `<image>` token id.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// Image tokens per `<image>`.
    pub fn image_tokens_per_image(&self) -> usize {
        self.image_tokens_per_image
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// End-of-sequence ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Padding id.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

/// Special tokens of a tokenizer made by [`train_small_tokenizer`], in id
/// order: `<unk>` 0, `<s>` 1, `</s>` 2, then after the learned vocabulary
/// `<image>` and `<pad>`.
pub const SMALL_SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Trains a small Llama-style BPE tokenizer on `texts`: SentencePiece-like
/// `▁` word boundaries (Metaspace, prepended to the first word), digits
/// always split one by one (so box coordinates are sequences of digit
/// tokens, as in Llama), every printable ASCII character and newline in the
/// alphabet so any ASCII text encodes without `<unk>`, BOS added by the
/// post-processor. `vocab_size` counts everything but `<image>` and
/// `<pad>`, which are added after the learned tokens. Deterministic for the
/// same texts.
pub fn train_small_tokenizer(texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper};

    let fail = |message: String| ModelError::Tokenizer {
        path: PathBuf::from("<training>"),
        message,
    };
    let model = BPE::builder()
        .unk_token(SMALL_SPECIALS[0].into())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let metaspace = Metaspace::new('▁', PrependScheme::First, true);
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Metaspace(metaspace.clone()),
        PreTokenizerWrapper::Digits(Digits::new(true)),
    ]))));
    tokenizer.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
    let alphabet: std::collections::HashSet<char> = (' '..='~')
        .chain(['\n', '▁'])
        .filter(|c| *c != ' ')
        .collect();
    let specials: Vec<AddedToken> = SMALL_SPECIALS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(alphabet)
            .build(),
    );
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| fail(e.to_string()))?;
    tokenizer
        .add_special_tokens([
            AddedToken::from(IMAGE_TOKEN, true),
            AddedToken::from("<pad>", true),
        ])
        .map_err(|e| fail(e.to_string()))?;
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .map_err(|e| fail(e.to_string()))?
        .try_pair("<s> $A <s> $B")
        .map_err(|e| fail(e.to_string()))?
        .special_tokens(vec![("<s>", 1)])
        .build()
        .map_err(|e| fail(e.to_string()))?;
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tokenizer_round_trips_grounded_text_and_is_deterministic() {
        let texts: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "USER: <image>\nDescribe the region. ASSISTANT: a red circle [{}, {}, {}, {}] on the left.",
                    i * 7 % 1000,
                    i * 13 % 1000,
                    i * 29 % 1000,
                    999 - i
                )
            })
            .collect();
        let a = train_small_tokenizer(&texts, 120).unwrap();
        let b = train_small_tokenizer(&texts, 120).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        let text = "a blue diamond [12, 340, 999, 7] at the top, {x}!";
        let enc = a.encode(text, true).unwrap();
        assert_eq!(enc.get_ids()[0], 1, "BOS first");
        assert!(
            !enc.get_ids().contains(&0),
            "no <unk>: {:?}",
            enc.get_tokens()
        );
        // Digits are single tokens.
        assert!(enc.get_tokens().iter().any(|t| t == "3"));
        assert!(!enc
            .get_tokens()
            .iter()
            .any(|t| t.chars().filter(char::is_ascii_digit).count() > 1));
        assert_eq!(a.decode(enc.get_ids(), true).unwrap(), text);
        let image = a.token_to_id(IMAGE_TOKEN).unwrap();
        assert_eq!(a.token_to_id("<pad>"), Some(image + 1));
        assert_eq!(a.get_vocab_size(true), image as usize + 2);
    }

    #[test]
    fn chat_prompt_matches_llava_hf_template() {
        assert_eq!(
            chat_prompt("Where is the cup?"),
            "USER: <image>\nWhere is the cup? ASSISTANT:"
        );
    }
}
