//! Caption tokenisation for CIDEr, after the COCO caption pipeline (pycocoevalcap `tokenizer/ptbtokenizer.py`).
//!
//! The official pipeline runs Stanford CoreNLP 3.4.1's Java `PTBTokenizer -preserveLines -lowerCase` on each
//! caption (newlines replaced by spaces), then drops the tokens
//! `'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;` and joins the rest with single spaces.
//! We cannot run the Java lexer, so this is a rule-based re-implementation of the parts that matter for
//! captions. What we implement:
//! 1. lowercase; split on whitespace;
//! 2. from each piece, peel off leading `"` `'` `` ` `` `(` `[` `{` and trailing `"` `'` `)` `]` `}` `,` `;`
//!    `:` `?` `!` `...` `.` (repeatedly); a trailing `.` stays attached when the rest of the piece contains a
//!    period (`u.s.`, `a.m.`) or is one of the abbreviations `mr mrs ms dr st jr sr vs etc inc co ltd`;
//! 3. split clitics: `n't` (`can't` -> `ca n't`, `won't` -> `wo n't`), `'s 're 've 'll 'd 'm`;
//!    `cannot` -> `can not`, `gonna`/`wanna`/`gotta` -> `gon na`/`wan na`/`got ta`;
//! 4. keep hyphenated words, numbers with `,` or `.` inside, and `&`, `/` as they are (PTB does not split
//!    them); a lone `-` or `--` is dropped by step 5;
//! 5. brackets become PTB escapes, *lowercased*: CoreNLP's `PTBTokenizer.tokReader` applies `-lowerCase` to
//!    each token's text after the lexer has escaped it, so `(` comes out as `-lrb-`, which the wrapper's
//!    uppercase drop list (`-LRB-`) does not match: bracket tokens `-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-` stay
//!    in the caption (read from CoreNLP's current source; not checked against the 3.4.1 jar);
//! 6. drop the official punctuation tokens.
//!
//! Not implemented (differences from the Java lexer we know of): its full abbreviation list and
//! sentence-final-period heuristics, Unicode quote/dash normalisation (`“` `”` `—`), `&amp;`-style
//! escapes, emoticons, URLs, e-mail addresses, and splitting of `$` or `%` from numbers. CIDEr on pre-tokenised
//! input does not depend on any of this.

/// Tokens the official wrapper removes after PTB tokenisation.
const DROPPED: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

const ABBREVIATIONS: [&str; 12] = [
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "ltd",
];

/// Tokenise one caption as the COCO caption pipeline does (see the module notes for the rules).
pub fn tokenize_caption(caption: &str) -> String {
    let lower = caption.replace('\n', " ").to_lowercase();
    let mut tokens: Vec<String> = Vec::new();
    for piece in lower.split_whitespace() {
        split_piece(piece, &mut tokens);
    }
    tokens
        .into_iter()
        .filter(|t| !DROPPED.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn split_piece(piece: &str, out: &mut Vec<String>) {
    let mut rest = piece;
    // Leading punctuation.
    loop {
        let Some(c) = rest.chars().next() else { return };
        let token = match c {
            '"' => "``",
            '\'' | '`' => "`",
            '(' => "-lrb-",
            '[' => "-lsb-",
            '{' => "-lcb-",
            _ => break,
        };
        out.push(token.to_string());
        rest = &rest[c.len_utf8()..];
    }
    // Trailing punctuation, collected right to left.
    let mut trailing: Vec<&str> = Vec::new();
    loop {
        if let Some(stem) = rest.strip_suffix("...") {
            trailing.push("...");
            rest = stem;
            continue;
        }
        let Some(c) = rest.chars().next_back() else {
            break;
        };
        let token = match c {
            '"' => "''",
            '\'' => "'",
            ')' => "-rrb-",
            ']' => "-rsb-",
            '}' => "-rcb-",
            ',' | ';' | ':' | '?' | '!' => &rest[rest.len() - 1..],
            '.' if !keeps_period(&rest[..rest.len() - 1]) => ".",
            _ => break,
        };
        trailing.push(token);
        rest = &rest[..rest.len() - c.len_utf8()];
    }
    if !rest.is_empty() {
        split_clitics(rest, out);
    }
    out.extend(trailing.into_iter().rev().map(str::to_string));
}

fn keeps_period(stem: &str) -> bool {
    !stem.is_empty() && (stem.contains('.') || ABBREVIATIONS.contains(&stem))
}

fn split_clitics(word: &str, out: &mut Vec<String>) {
    let special: Option<(&str, &str)> = match word {
        "cannot" => Some(("can", "not")),
        "gonna" => Some(("gon", "na")),
        "wanna" => Some(("wan", "na")),
        "gotta" => Some(("got", "ta")),
        _ => None,
    };
    if let Some((a, b)) = special {
        out.push(a.to_string());
        out.push(b.to_string());
        return;
    }
    if let Some(stem) = word.strip_suffix("n't").filter(|s| !s.is_empty()) {
        out.push(stem.to_string());
        out.push("n't".to_string());
        return;
    }
    for clitic in ["'s", "'re", "'ve", "'ll", "'d", "'m"] {
        if let Some(stem) = word.strip_suffix(clitic).filter(|s| !s.is_empty()) {
            out.push(stem.to_string());
            out.push(clitic.to_string());
            return;
        }
    }
    out.push(word.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_rules() {
        assert_eq!(tokenize_caption("A Dog, running."), "a dog running");
        assert_eq!(
            tokenize_caption("The dog's ball (red)!"),
            "the dog 's ball -lrb- red -rrb-"
        );
        assert_eq!(
            tokenize_caption("It can't be \"fun\"..."),
            "it ca n't be fun"
        );
        assert_eq!(
            tokenize_caption("Mr. Smith in the U.S."),
            "mr. smith in the u.s."
        );
        assert_eq!(
            tokenize_caption("a black-and-white cat - 1,000 times"),
            "a black-and-white cat 1,000 times"
        );
        assert_eq!(
            tokenize_caption("a [sign] and {x}"),
            "a -lsb- sign -rsb- and -lcb- x -rcb-"
        );
        assert_eq!(tokenize_caption("dogs' toys\nhere"), "dogs toys here");
    }
}
