//! MMBench's CircularEval (MMBench paper, §3.2): a multiple-choice question with N options is asked N times,
//! its options rotated by one place each time, and counts as right only if every rotation is answered
//! right. It removes the advantage of a model that prefers one letter.
//!
//! [`circular_samples`] makes the rotated copies (ids `{id}@circular{k}`); after scoring, [`circular_reports`]
//! gives one `"{task} (circular)"` row per task next to the per-copy accuracy of the task's own row.

use std::collections::BTreeMap;

use crate::choice::option_letters;
use crate::data::EvalSample;
use crate::metric::Metric;
use crate::predictions::Prediction;
use crate::report::TaskReport;

/// Marks a rotated copy's id: `{id}@circular{k}`.
pub const CIRCULAR_MARK: &str = "@circular";

/// Each multiple-choice sample as N rotated copies: copy `k` shows option `(i + k) mod N` in place `i`, and
/// its gold letter(s) move with their option. Samples without choices, or whose gold is not one of the
/// letters, are kept as they are (and do not count in the circular score).
pub fn circular_samples(samples: &[EvalSample]) -> Vec<EvalSample> {
    let mut out = Vec::new();
    for s in samples {
        let n = s.choices.len();
        let letters = option_letters(n);
        let gold: Option<Vec<usize>> = s
            .answers
            .iter()
            .map(|a| letters.iter().position(|l| l == a.trim()))
            .collect();
        let gold = match gold {
            Some(g) if n >= 2 && !g.is_empty() => g,
            _ => {
                out.push(s.clone());
                continue;
            }
        };
        for k in 0..n {
            let choices = (0..n).map(|i| s.choices[(i + k) % n].clone()).collect();
            // Option g sits at place (g - k) mod N once rotated.
            let answers = gold
                .iter()
                .map(|&g| letters[(g + n - k) % n].clone())
                .collect();
            out.push(EvalSample {
                id: format!("{}{CIRCULAR_MARK}{k}", s.id),
                choices,
                answers,
                ..s.clone()
            });
        }
    }
    out
}

/// The CircularEval score of each task whose predictions include rotated copies: the share (times 100) of
/// questions whose every rotation scored 1 in `per_sample` (a question with a missing rotation, e.g. a
/// failed sample, counts as wrong). `count` is the number of questions.
pub fn circular_reports(predictions: &[Prediction], per_sample: &[f64]) -> Vec<TaskReport> {
    // (task, metric) -> base id -> (rotations right, rotations seen, rotations expected)
    type Tally = BTreeMap<String, (usize, usize, usize)>;
    let mut groups: BTreeMap<(&str, Metric), Tally> = BTreeMap::new();
    for (p, score) in predictions.iter().zip(per_sample) {
        let Some((base, _)) = p.id.rsplit_once(CIRCULAR_MARK) else {
            continue;
        };
        let entry = groups
            .entry((&p.task, p.metric))
            .or_default()
            .entry(base.to_string())
            .or_default();
        entry.0 += usize::from(*score >= 1.0);
        entry.1 += 1;
        entry.2 = p.choices.len();
    }
    groups
        .into_iter()
        .map(|((task, metric), questions)| {
            let right = questions
                .values()
                .filter(|(ok, seen, expected)| ok == seen && seen == expected)
                .count();
            TaskReport {
                task: format!("{task} (circular)"),
                metric,
                score: 100.0 * right as f64 / questions.len().max(1) as f64,
                count: questions.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(id: &str, choices: &[&str], gold: &str) -> EvalSample {
        EvalSample {
            id: id.into(),
            task: "mmbench".into(),
            question: "Which?".into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            answers: vec![gold.into()],
            ..EvalSample::default()
        }
    }

    fn predict(s: &EvalSample, letter: &str) -> Prediction {
        Prediction {
            id: s.id.clone(),
            task: s.task.clone(),
            metric: Metric::MultipleChoice,
            question: s.question.clone(),
            prompt: String::new(),
            prediction: letter.into(),
            answers: s.answers.clone(),
            choices: s.choices.clone(),
            source: None,
        }
    }

    #[test]
    fn rotations_move_the_gold_letter_with_its_option() {
        let copies = circular_samples(&[mc("7", &["cat", "dog", "cow"], "B"), mc("8", &[], "x")]);
        assert_eq!(copies.len(), 4);
        let ids: Vec<&str> = copies.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["7@circular0", "7@circular1", "7@circular2", "8"]);
        for c in &copies[..3] {
            let gold = option_letters(3)
                .iter()
                .position(|l| *l == c.answers[0])
                .unwrap();
            assert_eq!(c.choices[gold], "dog", "{c:?}");
        }
        assert_eq!(copies[1].choices, ["dog", "cow", "cat"]);
    }

    #[test]
    fn a_question_counts_only_if_every_rotation_is_right() {
        let copies = circular_samples(&[mc("1", &["a", "b"], "A"), mc("2", &["a", "b"], "B")]);
        // Always answering "A" gets half the copies right but no question right on all its rotations;
        // answering the gold of question 1 everywhere, and "A" on question 2, gets question 1 only.
        let always_a: Vec<Prediction> = copies.iter().map(|c| predict(c, "A")).collect();
        let scores = |preds: &[Prediction]| -> Vec<f64> {
            preds
                .iter()
                .map(|p| {
                    Metric::MultipleChoice
                        .score_sample(&p.prediction, &p.answers, &p.choices)
                        .unwrap()
                })
                .collect()
        };
        let per = scores(&always_a);
        assert_eq!(per.iter().sum::<f64>(), 2.0);
        let r = circular_reports(&always_a, &per);
        assert_eq!(
            (r[0].task.as_str(), r[0].score, r[0].count),
            ("mmbench (circular)", 0.0, 2)
        );
        let mut right_on_1 = always_a.clone();
        right_on_1[1].prediction = copies[1].answers[0].clone();
        let per = scores(&right_on_1);
        assert_eq!(circular_reports(&right_on_1, &per)[0].score, 50.0);
        // A missing rotation makes the question wrong.
        assert_eq!(circular_reports(&right_on_1[1..], &per[1..])[0].score, 0.0);
    }
}
