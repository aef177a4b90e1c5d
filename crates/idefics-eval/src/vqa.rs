//! VQA accuracy (VQAv2, TextVQA, OKVQA), ported from the official scorer
//! GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`.
//!
//! A question has (usually 10) human answers. For each answer i, the prediction scores
//! `min(1, #matches among the other answers / 3)`; the question scores the mean over i. Quirks kept on
//! purpose, because they change scores:
//! - `processPunctuation` decides per punctuation mark whether to delete it or turn it into a space by
//!   looking at the *original* text, and deletes every mark whenever the text contains `digit,digit`.
//! - The period regex `(?!<=\d)(\.)(?!\d)` has a look-ahead typo for a look-behind, so it removes every `.`
//!   not followed by a digit, and `re.UNICODE` is passed as `count`, so at most 32 are removed.
//!   `\d` is ASCII `[0-9]` here, as in the Python 2 the script was written for.
//! - The contraction table contains capitalised keys (`Im`, `Ive`, `Id've`) that can never match after
//!   lowercasing, and a reversed entry (`somebody'd` -> `somebodyd`); we keep the table as it is.
//! - Which answers get normalised depends on the script version, see [`VqaEvalVersion`].

use crate::pytext::{py_split, py_strip};

/// Which revision of `vqaEval.py` to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VqaEvalVersion {
    /// The repository HEAD (commit a013f00, March 2021, "Fixed processing answers bug"): answers and
    /// prediction are whitespace-cleaned; when the answers are not all identical, both the answers and the
    /// prediction go through `processPunctuation` + `processDigitArticle`; when all answers are identical,
    /// *nothing* is normalised (a prediction `Yes` against ten `yes` scores 0).
    #[default]
    Current,
    /// The v2.0 release script (commit 458a8b2, 2016, used until 2021): the prediction is always
    /// whitespace-cleaned and fully normalised; the answers are left raw, except that they go through
    /// `processPunctuation` only (no digit/article/contraction mapping) when not all identical.
    Legacy,
}

/// The 21 punctuation marks `processPunctuation` handles (periods are handled separately).
const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// `manualMap`: number words to digits (note `none` -> `0`).
const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The official `contractions` table, entry for entry (including its odd and unreachable entries).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// The official script removes at most this many periods (`re.UNICODE == 32` passed as `count`).
const MAX_PERIODS_REMOVED: usize = 32;

/// `processPunctuation`: delete or space out punctuation, then drop periods not followed by a digit.
pub fn process_punctuation(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    // `re.search(commaStrip, inText)`: a comma between two digits anywhere deletes all marks.
    let digit_comma_digit = chars
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit());
    let mut out = String::with_capacity(text.len());
    for &c in &chars {
        if PUNCT.contains(&c) {
            let spaced = text.contains(&format!("{c} ")) || text.contains(&format!(" {c}"));
            if !(spaced || digit_comma_digit) {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    strip_periods(&out)
}

/// `periodStrip.sub("", text, re.UNICODE)`: remove up to 32 periods that are not followed by a digit.
fn strip_periods(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    let mut iter = text.chars().peekable();
    while let Some(c) = iter.next() {
        let followed_by_digit = iter.peek().is_some_and(char::is_ascii_digit);
        if c == '.' && !followed_by_digit && removed < MAX_PERIODS_REMOVED {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// `processDigitArticle`: lowercase, number words to digits, drop articles, restore contractions.
pub fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = py_split(&lower)
        .map(|w| lookup(&NUMBER_WORDS, w).unwrap_or(w))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| lookup(CONTRACTIONS, w).unwrap_or(w))
        .collect();
    words.join(" ")
}

fn lookup(table: &[(&'static str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The full normalisation applied to a prediction: whitespace clean-up, punctuation, digits/articles.
pub fn normalize_answer(text: &str) -> String {
    process_digit_article(&process_punctuation(&clean_whitespace(text)))
}

/// `replace('\n', ' ').replace('\t', ' ').strip()`.
fn clean_whitespace(text: &str) -> String {
    py_strip(&text.replace(['\n', '\t'], " ")).to_string()
}

/// Accuracy of one prediction against its human answers, in [0, 1], as `vqaEval.py` computes it.
///
/// Answers are compared by position for the leave-one-out (the official answers carry distinct
/// `answer_id`s, so `item != gtAnsDatum` excludes exactly one). No answers gives 0 (the official script
/// would divide by zero).
pub fn vqa_accuracy(prediction: &str, answers: &[String], version: VqaEvalVersion) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let (prediction, answers) = match version {
        VqaEvalVersion::Current => {
            let mut pred = clean_whitespace(prediction);
            let mut gts: Vec<String> = answers.iter().map(|a| clean_whitespace(a)).collect();
            if !all_identical(&gts) {
                gts = gts
                    .iter()
                    .map(|a| process_digit_article(&process_punctuation(a)))
                    .collect();
                pred = process_digit_article(&process_punctuation(&pred));
            }
            (pred, gts)
        }
        VqaEvalVersion::Legacy => {
            let pred = normalize_answer(prediction);
            let gts = if all_identical(answers) {
                answers.to_vec()
            } else {
                answers.iter().map(|a| process_punctuation(a)).collect()
            };
            (pred, gts)
        }
    };
    let matches_total = answers.iter().filter(|a| **a == prediction).count();
    let per_left_out: f64 = answers
        .iter()
        .map(|left_out| {
            let matches = matches_total - usize::from(*left_out == prediction);
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    per_left_out / answers.len() as f64
}

fn all_identical(answers: &[String]) -> bool {
    answers.windows(2).all(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn leave_one_out_table() {
        // k matching answers out of 10 -> (k * min(1,(k-1)/3) + (10-k) * min(1,k/3)) / 10.
        let mut gts = answers(&["x"; 10]);
        gts[0] = "y".into(); // not all identical, so normalisation runs
        for (k, expected) in [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)] {
            let mut g = answers(&["z"; 10]);
            for a in g.iter_mut().take(k) {
                *a = "cat".into();
            }
            let acc = vqa_accuracy("cat", &g, VqaEvalVersion::Current);
            assert!((acc - expected).abs() < 1e-12, "k={k}: {acc}");
        }
    }

    #[test]
    fn punctuation_quirks() {
        assert_eq!(process_punctuation("yes."), "yes");
        assert_eq!(process_punctuation("3.5"), "3.5");
        assert_eq!(process_punctuation("1,000"), "1000");
        // `-` not next to a space becomes a space; next to a space it is deleted.
        assert_eq!(process_punctuation("t-shirt"), "t shirt");
        assert_eq!(process_punctuation("t - shirt"), "t  shirt");
        // A digit-comma-digit anywhere deletes every mark, even unrelated ones.
        assert_eq!(process_punctuation("a-b 1,2"), "ab 12");
        assert_eq!(process_punctuation(&".".repeat(40)), "........");
    }

    #[test]
    fn digit_article_quirks() {
        assert_eq!(process_digit_article("The Two dogs"), "2 dogs");
        assert_eq!(process_digit_article("dont  know"), "don't know");
        assert_eq!(process_digit_article("Im here"), "im here");
        assert_eq!(process_digit_article("somebody'd"), "somebodyd");
        assert_eq!(process_digit_article("none"), "0");
    }

    #[test]
    fn identical_answers_skip_normalisation_in_current_version() {
        let gts = answers(&["yes"; 10]);
        assert_eq!(vqa_accuracy("Yes", &gts, VqaEvalVersion::Current), 0.0);
        assert_eq!(vqa_accuracy("Yes", &gts, VqaEvalVersion::Legacy), 1.0);
    }
}
