//! The metric names a predictions file and a report use, and the default metric of each benchmark.

use serde::{Deserialize, Serialize};

use crate::anls::{anls, AnlsNormalization, ANLS_THRESHOLD};
use crate::choice::multiple_choice_accuracy;
use crate::exact::{exact_match, ExactNormalization};
use crate::open::open_accuracy;
use crate::relaxed::relaxed_accuracy;
use crate::vqa::{vqa_accuracy, VqaEvalVersion};

/// A benchmark metric. Its serialised name is what `metric` holds in a predictions file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// VQA accuracy, `vqaEval.py` at the repository HEAD (VQAv2, TextVQA, OKVQA).
    VqaAccuracy,
    /// VQA accuracy, `vqaEval.py` as released with VQA v2.0 (2016-2021).
    VqaAccuracyLegacy,
    /// ANLS, threshold 0.5, RRC normalisation (DocVQA, InfographicVQA, ST-VQA).
    Anls,
    /// ANLS as pix2struct computes it (lowercase only).
    AnlsPix2struct,
    /// ChartQA relaxed accuracy (5% relative tolerance on numbers).
    RelaxedAccuracy,
    /// Multiple-choice accuracy with MMMU's letter extraction (MMMU, MMBench, AI2D, ScienceQA).
    MultipleChoice,
    /// MMMU's rule-based scoring of free-form answers (MMMU open questions, MathVista in m4).
    MmmuOpen,
    /// Exact match after the VQA answer normalisation.
    ExactMatch,
    /// Exact match on raw strings.
    ExactMatchRaw,
    /// Exact match after trimming, lower-casing and dropping surrounding punctuation (short exact answers:
    /// the synthetic set's words, numbers, letters, yes/no).
    ExactMatchLoose,
    /// CIDEr-D over captions tokenised by [`crate::ptb::tokenize_caption`] (COCO, TextCaps, NoCaps).
    Cider,
    /// CIDEr-D over captions that are already tokenised (space-separated).
    CiderPretokenized,
}

impl Metric {
    /// All metrics, in report order.
    pub const ALL: [Metric; 12] = [
        Metric::VqaAccuracy,
        Metric::VqaAccuracyLegacy,
        Metric::Anls,
        Metric::AnlsPix2struct,
        Metric::RelaxedAccuracy,
        Metric::MultipleChoice,
        Metric::MmmuOpen,
        Metric::ExactMatch,
        Metric::ExactMatchRaw,
        Metric::ExactMatchLoose,
        Metric::Cider,
        Metric::CiderPretokenized,
    ];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::VqaAccuracy => "vqa_accuracy",
            Metric::VqaAccuracyLegacy => "vqa_accuracy_legacy",
            Metric::Anls => "anls",
            Metric::AnlsPix2struct => "anls_pix2struct",
            Metric::RelaxedAccuracy => "relaxed_accuracy",
            Metric::MultipleChoice => "multiple_choice",
            Metric::MmmuOpen => "mmmu_open",
            Metric::ExactMatch => "exact_match",
            Metric::ExactMatchRaw => "exact_match_raw",
            Metric::ExactMatchLoose => "exact_match_loose",
            Metric::Cider => "cider",
            Metric::CiderPretokenized => "cider_pretokenized",
        }
    }

    /// Parse a metric name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the score is computed over the whole task rather than averaged per sample.
    pub fn is_corpus_level(self) -> bool {
        matches!(self, Metric::Cider | Metric::CiderPretokenized)
    }

    /// The official metric of a benchmark, by task name (case-insensitive; The Cauldron config names and
    /// common spellings). `None` for an unknown task: the caller must then name a metric.
    pub fn default_for_task(task: &str) -> Option<Metric> {
        let t = task.to_ascii_lowercase().replace('-', "_");
        let metric = match t.as_str() {
            "vqav2" | "vqa_v2" | "textvqa" | "okvqa" | "vizwiz" | "vizwiz_vqa" => {
                Metric::VqaAccuracy
            }
            "docvqa" | "infographicvqa" | "infographic_vqa" | "infovqa" | "st_vqa" | "stvqa" => {
                Metric::Anls
            }
            "chartqa" | "plotqa" => Metric::RelaxedAccuracy,
            "mmmu" | "mathvista" | "mmbench" | "ai2d" | "scienceqa" | "mmstar" | "seedbench"
            | "tqa" => Metric::MultipleChoice,
            "coco" | "coco_captions" | "textcaps" | "nocaps" | "flickr30k" => Metric::Cider,
            "gqa" | "ocrvqa" | "vsr" | "tallyqa" => Metric::ExactMatch,
            // `idefics data synth`: The Cauldron rows whose answers are one exact word, number or letter.
            "synth" => Metric::ExactMatchLoose,
            _ => return None,
        };
        Some(metric)
    }

    /// The metric of one sample: the task's, except that a sample without choices in a multiple-choice
    /// task (MMMU open questions, MathVista free-form) is scored MMMU-style as open ([`Metric::MmmuOpen`]),
    /// as m4 scores them.
    pub fn for_sample(task: &str, has_choices: bool) -> Option<Metric> {
        match Metric::default_for_task(task)? {
            Metric::MultipleChoice if !has_choices => Some(Metric::MmmuOpen),
            m => Some(m),
        }
    }

    /// Score of one sample in [0, 1]; `None` for corpus-level metrics (see [`crate::cider`]).
    ///
    /// For [`Metric::MultipleChoice`], `answers` holds the gold letter(s) and `choices` the option texts.
    pub fn score_sample(
        self,
        prediction: &str,
        answers: &[String],
        choices: &[String],
    ) -> Option<f64> {
        let score = match self {
            Metric::VqaAccuracy => vqa_accuracy(prediction, answers, VqaEvalVersion::Current),
            Metric::VqaAccuracyLegacy => vqa_accuracy(prediction, answers, VqaEvalVersion::Legacy),
            Metric::Anls => anls(prediction, answers, ANLS_THRESHOLD, AnlsNormalization::Rrc),
            Metric::AnlsPix2struct => anls(
                prediction,
                answers,
                ANLS_THRESHOLD,
                AnlsNormalization::Pix2Struct,
            ),
            Metric::RelaxedAccuracy => relaxed_accuracy(prediction, answers),
            Metric::MultipleChoice => multiple_choice_accuracy(prediction, choices, answers),
            Metric::MmmuOpen => open_accuracy(prediction, answers),
            Metric::ExactMatch => exact_match(prediction, answers, ExactNormalization::Vqa),
            Metric::ExactMatchRaw => exact_match(prediction, answers, ExactNormalization::None),
            Metric::ExactMatchLoose => exact_match(prediction, answers, ExactNormalization::Loose),
            Metric::Cider | Metric::CiderPretokenized => return None,
        };
        Some(score)
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_name() {
        for m in Metric::ALL {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("bleu"), None);
    }

    #[test]
    fn task_defaults() {
        assert_eq!(Metric::default_for_task("VQAv2"), Some(Metric::VqaAccuracy));
        assert_eq!(
            Metric::default_for_task("infographic_vqa"),
            Some(Metric::Anls)
        );
        assert_eq!(
            Metric::default_for_task("ChartQA"),
            Some(Metric::RelaxedAccuracy)
        );
        assert_eq!(Metric::default_for_task("unknown"), None);
        assert_eq!(
            Metric::for_sample("mmmu", true),
            Some(Metric::MultipleChoice)
        );
        assert_eq!(
            Metric::for_sample("MathVista", false),
            Some(Metric::MmmuOpen)
        );
        assert_eq!(Metric::for_sample("docvqa", false), Some(Metric::Anls));
    }
}
