//! The prompts the Idefics2 paper evaluated with (the paper's appendix A.3.1 and m4's evaluation code).
//!
//! - Instruct models, zero-shot. The user turn holds the image(s), then the text; the chat template (the
//!   processor's job) wraps it as `User:<image>...<end_of_utterance>\nAssistant:`.
//!   - open-ended (VQAv2, TextVQA, DocVQA, ...): `{question}\nGive a very brief answer.` (m4
//!     `prompt_templates_dict_instruct`);
//!   - multiple choice (MMMU, MMBench, AI2D, ...): `Question: {question}\nChoices:\nA. {a}\nB. {b}\n...Answer
//!     with the letter.` (Paper A.3.1).
//! - Base models, k-shot (Paper Table 8: 8 random in-context examples): each shot is
//!   `Image:<image>Question: {question} Answer: {answer}\n` (captioning: `Image:<image>Caption: {caption}\n`),
//!   then the query without its answer. Shots come from a support split disjoint from the scored split,
//!   drawn per query from a seed ([`select_shots`]).
//! - Greedy decoding, stop words `Question`, `User`, `<end_of_utterance>`, `<eos>` ([`STOP_WORDS`]).

use std::collections::HashSet;

use crate::choice::option_letters;
use crate::data::{EvalSample, ImageSource};
use crate::{EvalError, Result};

/// The image placeholder the processor expands into image tokens.
pub const IMAGE_TOKEN: &str = "<image>";

/// Generation stops at any of these (Paper A.3.1).
pub const STOP_WORDS: [&str; 4] = ["Question", "User", "<end_of_utterance>", "<eos>"];

/// Template of the instruct open-ended prompt.
pub const INSTRUCT_OPEN_ENDED: &str = "{question}\nGive a very brief answer.";
/// Template of the instruct multiple-choice prompt.
pub const INSTRUCT_MULTIPLE_CHOICE: &str =
    "Question: {question}\nChoices:\n{choices}Answer with the letter.";
/// Template of a The Cauldron question, whose user turn already says how to answer (used as it is).
pub const INSTRUCT_VERBATIM: &str = "{question}";
/// Template of one base-model VQA shot (the query ends after `Answer:`).
pub const BASE_VQA_SHOT: &str = "Image:<image>Question: {question} Answer: {answer}\n";
/// Template of one base-model captioning shot (the query ends after `Caption:`).
pub const BASE_CAPTION_SHOT: &str = "Image:<image>Caption: {caption}\n";

/// A prompt ready for the processor.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// For instruct models: the user turn's text (images precede it). For base models: the whole text, with
    /// one `<image>` per image.
    pub text: String,
    /// Images, in the order of their placeholders.
    pub images: Vec<ImageSource>,
    /// The template used, for the report.
    pub template: &'static str,
}

/// The zero-shot instruct prompt of a sample (multiple choice when it has choices).
pub fn instruct_prompt(sample: &EvalSample) -> Prompt {
    if sample.verbatim {
        // The Cauldron's user turns carry their own instruction (e.g. the synthetic set's "Answer with a
        // single word or number."): the model was trained on exactly that text.
        Prompt {
            text: sample.question.clone(),
            images: sample.images.clone(),
            template: INSTRUCT_VERBATIM,
        }
    } else if sample.choices.is_empty() {
        Prompt {
            text: INSTRUCT_OPEN_ENDED.replace("{question}", &sample.question),
            images: sample.images.clone(),
            template: INSTRUCT_OPEN_ENDED,
        }
    } else {
        let choices: String = option_letters(sample.choices.len())
            .iter()
            .zip(&sample.choices)
            .map(|(letter, text)| format!("{letter}. {text}\n"))
            .collect();
        Prompt {
            text: INSTRUCT_MULTIPLE_CHOICE
                .replace("{question}", &sample.question)
                .replace("{choices}", &choices),
            images: sample.images.clone(),
            template: INSTRUCT_MULTIPLE_CHOICE,
        }
    }
}

/// The k-shot base-model prompt: the shots with their answers, then the query. `captioning` selects the
/// caption format (the question is then unused).
pub fn base_prompt(sample: &EvalSample, shots: &[&EvalSample], captioning: bool) -> Result<Prompt> {
    if !sample.choices.is_empty() {
        return Err(EvalError::Invalid(format!(
            "sample {}: the paper has no base-model prompt for multiple choice; evaluate an instruct model",
            sample.id
        )));
    }
    let mut text = String::new();
    let mut images = Vec::new();
    for shot in shots {
        let answer = most_common_answer(&shot.answers).ok_or_else(|| {
            EvalError::Invalid(format!(
                "support sample {} has no answer to show as a shot",
                shot.id
            ))
        })?;
        text.push_str(&fill_shot(shot, Some(answer), captioning));
        text.push('\n');
        images.extend(shot.images.iter().cloned());
    }
    text.push_str(&fill_shot(sample, None, captioning));
    images.extend(sample.images.iter().cloned());
    Ok(Prompt {
        text,
        images,
        template: if captioning {
            BASE_CAPTION_SHOT
        } else {
            BASE_VQA_SHOT
        },
    })
}

/// One shot (with its answer) or the query (without), e.g. `Image:<image>Question: q Answer: a`.
fn fill_shot(sample: &EvalSample, answer: Option<&str>, captioning: bool) -> String {
    // Multi-image samples get one placeholder per image.
    let images = "Image:".to_string() + &IMAGE_TOKEN.repeat(sample.images.len().max(1));
    let body = if captioning {
        "Caption:".to_string()
    } else {
        format!("Question: {} Answer:", sample.question)
    };
    match answer {
        Some(a) => format!("{images}{body} {a}"),
        None => format!("{images}{body}"),
    }
}

/// The answer most annotators gave (first in order among ties), as VQAv2's `multiple_choice_answer`.
pub fn most_common_answer(answers: &[String]) -> Option<&str> {
    let mut best: Option<(&str, usize)> = None;
    for a in answers {
        let count = answers.iter().filter(|b| *b == a).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((a, count));
        }
    }
    best.map(|(a, _)| a)
}

/// Pick `k` distinct support indices for one query, deterministically from `seed` and the query's id
/// (so the shots of a query do not depend on `--limit`, batching or resumption). Fewer when the support
/// split is smaller than `k`. Robert Floyd's sampling over a SplitMix64 stream.
pub fn select_shots(support_len: usize, query_id: &str, k: usize, seed: u64) -> Vec<usize> {
    let k = k.min(support_len);
    let mut rng = SplitMix64(seed ^ fnv1a(query_id.as_bytes()));
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    for j in support_len - k..support_len {
        let t = (rng.next() % (j as u64 + 1)) as usize;
        chosen.push(if chosen.contains(&t) { j } else { t });
    }
    chosen
}

/// Fail when the support split shares a sample id or an image file with the scored split: in-context
/// examples must not leak the answers being scored.
pub fn check_disjoint(support: &[EvalSample], scored: &[EvalSample]) -> Result<()> {
    let ids: HashSet<&str> = scored.iter().map(|s| s.id.as_str()).collect();
    let images: HashSet<&ImageSource> = scored
        .iter()
        .flat_map(|s| &s.images)
        .filter(|i| matches!(i, ImageSource::Path(_)))
        .collect();
    for s in support {
        if ids.contains(s.id.as_str()) {
            return Err(EvalError::Invalid(format!(
                "support sample {} is also in the scored split",
                s.id
            )));
        }
        if let Some(ImageSource::Path(p)) = s.images.iter().find(|i| images.contains(i)) {
            return Err(EvalError::Invalid(format!(
                "support sample {} uses image {}, which the scored split also uses",
                s.id,
                p.display()
            )));
        }
    }
    Ok(())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(id: &str, q: &str, answers: &[&str], choices: &[&str]) -> EvalSample {
        EvalSample {
            id: id.into(),
            task: "t".into(),
            images: vec![ImageSource::Path(PathBuf::from(format!("{id}.jpg")))],
            question: q.into(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            ..EvalSample::default()
        }
    }

    #[test]
    fn instruct_prompts() {
        let p = instruct_prompt(&sample("1", "What color?", &["red"], &[]));
        assert_eq!(p.text, "What color?\nGive a very brief answer.");
        let verbatim = EvalSample {
            verbatim: true,
            ..sample(
                "v",
                "What color?\nAnswer with a single word.",
                &["red"],
                &[],
            )
        };
        assert_eq!(
            instruct_prompt(&verbatim).text,
            "What color?\nAnswer with a single word."
        );
        let p = instruct_prompt(&sample("2", "Which animal?", &["B"], &["cat", "dog"]));
        assert_eq!(
            p.text,
            "Question: Which animal?\nChoices:\nA. cat\nB. dog\nAnswer with the letter."
        );
        assert_eq!(p.images.len(), 1);
    }

    #[test]
    fn base_prompt_puts_shots_first() {
        let s1 = sample("s1", "How many?", &["2", "two", "2"], &[]);
        let s2 = sample("s2", "Where?", &["park"], &[]);
        let q = sample("q", "What is it?", &["cat"], &[]);
        let p = base_prompt(&q, &[&s1, &s2], false).unwrap();
        assert_eq!(
            p.text,
            "Image:<image>Question: How many? Answer: 2\nImage:<image>Question: Where? Answer: park\nImage:<image>Question: What is it? Answer:"
        );
        let paths: Vec<_> = p.images.iter().map(|i| format!("{i:?}")).collect();
        assert!(paths[0].contains("s1") && paths[2].contains("q.jpg"));
        assert!(base_prompt(&sample("m", "?", &["A"], &["x"]), &[], false).is_err());
    }

    #[test]
    fn shots_are_distinct_deterministic_and_seed_dependent() {
        let a = select_shots(100, "q1", 8, 0);
        assert_eq!(a, select_shots(100, "q1", 8, 0));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 8);
        assert!(a.iter().all(|&i| i < 100));
        assert_ne!(a, select_shots(100, "q1", 8, 1));
        assert_ne!(a, select_shots(100, "q2", 8, 0));
        assert_eq!(select_shots(3, "q", 8, 0).len(), 3);
        assert!(select_shots(0, "q", 8, 0).is_empty());
    }

    #[test]
    fn disjointness_is_enforced() {
        let scored = [sample("1", "q", &["a"], &[])];
        assert!(check_disjoint(&[sample("2", "q", &["a"], &[])], &scored).is_ok());
        assert!(check_disjoint(&[sample("1", "q", &["a"], &[])], &scored).is_err());
        let mut same_image = sample("3", "q", &["a"], &[]);
        same_image.images = scored[0].images.clone();
        assert!(check_disjoint(&[same_image], &scored).is_err());
    }
}
