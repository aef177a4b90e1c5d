#!/usr/bin/env python3
"""Generate tests/fixtures/eval/*.json by running the OFFICIAL scorers on hand-made and adversarial cases.

Nothing of the official code is committed: this script loads it at run time from local git mirrors of the
official repositories (and from PyPI packages), into a temporary directory.

Official sources used:
  GT-Vision-Lab/VQA   PythonEvaluationTools/vqaEvaluation/vqaEval.py at a013f00 (HEAD) and 458a8b2 (v2.0)
  MMMU-Benchmark/MMMU mmmu/utils/eval_utils.py (parse_multi_choice_response, eval_multi_choice)
  google-research/pix2struct  pix2struct/metrics.py (relaxed_correctness, anls_metric, aggregate_metrics)
  salaniz/pycocoevalcap       cider/cider.py, cider/cider_scorer.py (CIDEr-D)
  PyPI `anls` (shunk031/ANLS, port of the RRC InfographicVQA scorer): anls.anls_score

Usage (a venv with `pip install anls editdistance numpy pycocoevalcap`):
  python make_fixtures.py --vqa GIT_DIR --mmmu GIT_DIR --pix2struct GIT_DIR --coco GIT_DIR --out tests/fixtures/eval
where each GIT_DIR is a clone (or bare mirror) of the repository named above.
"""
import argparse
import importlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import tempfile

VQA_CURRENT = "a013f0043c1e2cdc995922dfe257f7149aa9af06"
VQA_LEGACY = "458a8b2"


def git_show(git_dir, rev, path):
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def git_head(git_dir):
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def git_dir_of(path):
    return path if os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects")) \
        else os.path.join(path, ".git")


def load_module(tmp, name, source):
    path = os.path.join(tmp, name + ".py")
    with open(path, "w") as f:
        f.write(source)
    if tmp not in sys.path:
        sys.path.insert(0, tmp)
    return importlib.import_module(name)


class Gt:
    """The minimum of the VQA API object (`vqa.qa`, `vqa.getQuesIds()`) that VQAEval reads."""

    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def py2_prints_to_py3(source):
    # The VQA scorer is Python 2; only its `print "..."` statements stop Python 3 from importing it.
    return re.sub(r'^(\s*)print (".*")\s*$', r"\1print(\2)", source, flags=re.M)


# --------------------------------------------------------------------------------------------------------
# VQA accuracy
# --------------------------------------------------------------------------------------------------------

NORMALIZATION_INPUTS = [
    "yes.", "Yes", "3.5", "3.5.", ".5", "1,000", "$1,000.00", "t-shirt", "t - shirt", "a-b 1,2", "up/down",
    "hot-dog", "(a) b", "what?", "what ?", "hello, world", "hello,world", "10:30", "mr. smith", "e.g.",
    "." * 40, "a" + "." * 40 + "b", "The Two dogs", "the the", "An apple", "none", "ten", "eleven",
    "dont  know", "Im here", "Ive", "somebody'd", "isnt", "whats up", "o'clock", "oclock", "café",
    "CAFÉ", "\u00a0x\u00a0", "a\u2003b", "x=y", "<b>", "@home", "`q`", "a_b", "\\n", "[x]", "{y}",
    "\"quoted\"", "semi;colon", "semi ; colon", "1,2,3", "1, 2", "2 , 3", "", "   ", "Two.", "hot dog!",
]

VQA_CASES = [
    ("two-vs-2", "two", ["2"] * 6 + ["two"] * 2 + ["3"] * 2),
    ("capital-Two", "Two", ["2"] * 5 + ["4"] * 5),
    ("the-dog", "the dog", ["dog"] * 3 + ["puppy"] * 7),
    ("a-dog", "A dog.", ["dog"] * 2 + ["cat"] * 8),
    ("dont", "dont know", ["don't know"] * 4 + ["no"] * 6),
    ("dont-apostrophe-gt", "don't know", ["dont know"] * 4 + ["no"] * 6),
    ("comma-number", "1,000", ["1000"] * 7 + ["100"] * 3),
    ("comma-number-gt", "1000", ["1,000"] * 7 + ["100"] * 3),
    ("trailing-period", "yes.", ["yes"] * 9 + ["no"]),
    ("all-identical-case", "Yes", ["yes"] * 10),
    ("all-identical-period", "yes.", ["yes"] * 10),
    ("all-identical-exact", "yes", ["yes"] * 10),
    ("hyphen", "t-shirt", ["t shirt"] * 3 + ["shirt"] * 7),
    ("hyphen-gt", "t shirt", ["t-shirt"] * 3 + ["shirt"] * 7),
    ("hotdog", "hot-dog", ["hot dog"] * 2 + ["hotdog"] * 4 + ["sandwich"] * 4),
    ("decimal", "3.5", ["3.5"] * 5 + ["3"] * 5),
    ("decimal-period", "3.5.", ["3.5"] * 5 + ["3"] * 5),
    ("newline", "yes\n", ["yes"] * 8 + ["no"] * 2),
    ("tab-inside", "red\tcar", ["red car"] * 3 + ["car"] * 7),
    ("none-zero", "none", ["0"] * 4 + ["1"] * 6),
    ("Im-quirk", "Im fine", ["i'm fine"] * 4 + ["fine"] * 6),
    ("money", "$1,000.00", ["$1000.00"] * 3 + ["1000"] * 7),
    ("slash", "up/down", ["up down"] * 3 + ["up"] * 7),
    ("many-periods", "." * 40, ["........"] * 3 + ["x"] * 7),
    ("unicode", "Café", ["café"] * 5 + ["cafe"] * 5),
    ("empty-pred", "", ["yes"] * 5 + ["no"] * 5),
    ("one-match", "blue", ["blue"] + ["red"] * 9),
    ("two-matches", "blue", ["blue"] * 2 + ["red"] * 8),
    ("three-matches", "blue", ["blue"] * 3 + ["red"] * 7),
    ("four-matches", "blue", ["blue"] * 4 + ["red"] * 6),
    ("no-match", "green", ["blue"] * 4 + ["red"] * 6),
    ("gt-with-tab", "red car", ["red\tcar"] * 3 + ["car"] * 7),
    ("gt-spaces", "red car", [" red car "] * 3 + ["car"] * 7),
    ("question-mark", "what?", ["what"] * 3 + ["who"] * 7),
    ("colon-time", "10:30", ["10:30"] * 3 + ["1030"] * 7),
    ("contraction-isnt", "isnt", ["isn't"] * 3 + ["is"] * 7),
    ("articles-only", "the the", [""] * 3 + ["x"] * 7),
    ("comma-elsewhere", "red, blue 1,2", ["red blue 12"] * 3 + ["x"] * 7),
    ("mixed-normalised", "Two Dogs!", ["2 dogs"] * 3 + ["dogs"] * 3 + ["2"] * 4),
    ("three-answers", "yes", ["yes", "no", "yes"]),
]


def vqa_fixture(vqa_git, tmp):
    current = load_module(tmp, "vqaEval_current",
                          py2_prints_to_py3(git_show(vqa_git, VQA_CURRENT, "PythonEvaluationTools/vqaEvaluation/vqaEval.py")))
    legacy = load_module(tmp, "vqaEval_legacy",
                         py2_prints_to_py3(git_show(vqa_git, VQA_LEGACY, "PythonEvaluationTools/vqaEvaluation/vqaEval.py")))

    def run(module, cases, n):
        import copy
        import io
        qa, res = {}, {}
        for i, (_, pred, answers) in enumerate(cases):
            qa[i] = {"question_id": i, "question_type": "t", "answer_type": "other",
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                 for j, a in enumerate(answers)]}
            res[i] = {"question_id": i, "answer": pred}
        ev = module.VQAEval(Gt(copy.deepcopy(qa)), Gt(res), n=n)
        stdout, sys.stdout = sys.stdout, io.StringIO()
        try:
            ev.evaluate()
        finally:
            sys.stdout = stdout
        return ev

    ev0 = current.VQAEval(Gt({}), Gt({}))
    norm = [{"input": s, "process_punctuation": ev0.processPunctuation(s),
             "process_digit_article": ev0.processDigitArticle(s)} for s in NORMALIZATION_INPUTS]
    out = {"normalization": norm, "cases": [], "overall": {}}
    exact = {}
    for version, module in (("current", current), ("legacy", legacy)):
        exact[version] = run(module, VQA_CASES, 15)  # per question, 15 decimals: unrounded for our purpose
        out["overall"][version] = run(module, VQA_CASES, 2).accuracy["overall"]
    for i, (name, pred, answers) in enumerate(VQA_CASES):
        out["cases"].append({"id": name, "prediction": pred, "answers": answers,
                             "current": exact["current"].evalQA[i] / 100.0,
                             "legacy": exact["legacy"].evalQA[i] / 100.0})
    out["source"] = {"repo": "GT-Vision-Lab/VQA", "file": "PythonEvaluationTools/vqaEvaluation/vqaEval.py",
                     "current_commit": VQA_CURRENT, "legacy_commit": VQA_LEGACY,
                     "note": "per-case scores from VQAEval(n=15).evalQA / 100; overall from VQAEval(n=2)"}
    return out, current


# --------------------------------------------------------------------------------------------------------
# ANLS
# --------------------------------------------------------------------------------------------------------

ANLS_CASES = [
    ("exact", "Denver Broncos", ["Denver Broncos", "Denver R. Broncos"]),
    ("case", "DENVER broncos", ["Denver Broncos"]),
    ("whitespace", "  Denver   Broncos ", ["Denver Broncos"]),
    ("ocr-typo", "12/15/89", ["12/15/88"]),
    ("best-of-two", "Dear dr. Lobo", ["Dear Dr. Lobo", "Dr. Lobo"]),
    ("half-exactly", "ax", ["ab"]),
    ("just-below-half", "abx", ["abcd"]),
    ("just-above-half", "abcx", ["abcd"]),
    ("far", "completely different", ["room b12"]),
    ("empty-pred", "", ["answer"]),
    ("empty-both", "", [""]),
    ("eszett", "strasse", ["straße"]),
    ("eszett-upper-quirk", "ß", ["s"]),
    ("eszett-upper-length", "ßx", ["sx"]),
    ("ligature", "ﬁle", ["file"]),
    ("unicode", "café", ["cafe"]),
    ("trailing-period", "1990.", ["1990"]),
    ("newline", "New\nYork", ["new york"]),
    ("many-gts", "30%", ["30", "30 %", "thirty percent", "30%"]),
    ("long", "the quick brown fox jumps over the lazy dog", ["the quick brown fox jumped over a lazy dog"]),
    ("number", "1,234", ["1234"]),
]


def anls_fixture(pix2struct):
    from anls import anls_score
    cases = []
    for name, pred, gts in ANLS_CASES:
        rrc = anls_score(prediction=pred, gold_labels=gts, threshold=0.5)
        try:
            p2s = max(pix2struct.anls_metric(t.lower(), pred.lower()) for t in gts)
        except ZeroDivisionError:
            p2s = None
        cases.append({"id": name, "prediction": pred, "answers": gts, "rrc": rrc, "pix2struct": p2s})
    return {"source": {"rrc": f"PyPI anls {importlib.metadata.version('anls')} anls.anls_score(threshold=0.5)",
                       "pix2struct": "pix2struct/metrics.py anls_metric with normalize_fn=lower, max over targets"},
            "cases": cases}


# --------------------------------------------------------------------------------------------------------
# Relaxed accuracy
# --------------------------------------------------------------------------------------------------------

RELAXED_CASES = [
    ("exact-number", "12", ["12"]), ("within-5", "105", ["100"]), ("edge-5", "95", ["100"]),
    ("outside-5", "105.1", ["100"]), ("negative", "-10.4", ["-10"]), ("percent-target", "0.41", ["40%"]),
    ("percent-both", "41%", ["40%"]), ("percent-vs-plain", "41", ["40%"]), ("zero-target", "0.0", ["0"]),
    ("zero-target-same", "0", ["0"]), ("comma", "1,000", ["1000"]), ("spaces", " 12 ", ["12"]),
    ("trailing-dot", "12.", ["12"]), ("exp", "1e3", ["1000"]), ("underscore", "1_000", ["1000"]),
    ("inf", "inf", ["100"]), ("nan", "nan", ["100"]), ("nan-target", "nan", ["nan"]),
    ("text-case", "Yes", ["yes"]), ("text-diff", "yes.", ["yes"]), ("text-number", "twelve", ["12"]),
    ("number-text-target", "12", ["twelve"]), ("two-targets", "7", ["5", "7.2"]),
    ("plus-sign", "+5", ["5"]), ("double-percent", "50%%", ["0.5"]), ("tiny", "0.0104", ["0.01"]),
    ("year", "2010", ["2011"]), ("unicode-minus", "−5", ["-5"]), ("empty", "", ["0"]),
]


def relaxed_fixture(pix2struct):
    cases = []
    for name, pred, targets in RELAXED_CASES:
        cases.append({"id": name, "prediction": pred, "answers": targets,
                      "correct": bool(max(pix2struct.relaxed_correctness(t, pred) for t in targets))})
    return {"source": "pix2struct/metrics.py relaxed_correctness, max over targets", "cases": cases}


# --------------------------------------------------------------------------------------------------------
# Multiple choice (MMMU parser)
# --------------------------------------------------------------------------------------------------------

CHOICE_OPTIONS = ["a cat", "a dog", "a bird", "a fish"]
CHOICE_RESPONSES = [
    "B", "b", "(B)", "(B) a dog", "B.", "B:", "B,.", "B.,", "'B'", "The answer is C", "The answer is C.",
    "Answer: D", "A or (B), not (C)", "(A) (B)", "A B", "I think it is a dog", "it is a dog",
    "I would say the picture shows a dog and not a cat", "None of these", "", "E", "(E)", "The answer is (C).",
    "B) a dog", "[B]", "**B**", "Option B", "A. a cat", "The correct option is B because it shows a dog.",
    "A dog is shown in the picture, clearly", "B\n", " C ", "a bird or a fish, I think it is a fish",
    "I cannot tell at all from this picture honestly",
]


def choice_fixture(mmmu):
    letters = ["A", "B", "C", "D"]
    index2ans = dict(zip(letters, CHOICE_OPTIONS))
    mmmu.random.choice = lambda seq: None  # their random fallback -> a sentinel we record as "no answer"
    cases = []
    for r in CHOICE_RESPONSES:
        pred = mmmu.parse_multi_choice_response(r, letters, index2ans)
        cases.append({"response": r, "parsed": pred,
                      "correct_if_gold_B": bool(pred is not None and mmmu.eval_multi_choice("B", pred))})
    return {"source": "MMMU mmmu/utils/eval_utils.py parse_multi_choice_response (random.choice -> None)",
            "options": CHOICE_OPTIONS, "cases": cases}


# --------------------------------------------------------------------------------------------------------
# Open (free-form) answers, MMMU style
# --------------------------------------------------------------------------------------------------------

OPEN_CASES = [
    ("The answer is 3.14159", ["3.14"]), ("so the result is Paris.", ["paris"]), ("It is 12", ["13"]),
    ("12", ["12.0"]), ("1,234", ["1234"]), ("The total is 1,234,567 dollars", ["1234567"]),
    ("x = 5\nso y = 7", ["7"]), ("x = 5\nso y = 7", ["5"]), ("Therefore, the final answer is B", ["b"]),
    ("A", ["a"]), ("The value could be -2.5e3 or 7", ["-2500"]), ("answer: 0.125", ["0.12"]),
    ("answer: 2.675", ["2.67"]), ("The speed is 12 m/s. So it is fast", ["12"]), ("It is.", ["it"]),
    ("", ["0"]), ("The answer is: 42.", ["42"]), ("thus 3/4", ["0.75"]), ("therefore 3/4", ["3/4"]),
    ("The answer is 1e3", ["1000"]), ("x is 123,456", ["456"]), ("is is is", ["is"]),
    ("The result is ,", ["result"]), ("Final answer = 10%", ["10"]), ("the answer is NaN", ["nan"]),
    ("The angle is 45 degrees. Thus it is acute.", ["45"]), ("so 1/2\nso 2", ["0.5"]),
    ("Value: .5", ["0.5"]), ("The population is 8 billion", ["8 billion"]), ("It is blue-green", ["blue"]),
]


def open_fixture(mmmu):
    cases = []
    for response, gold in OPEN_CASES:
        parsed = mmmu.parse_open_response(response)
        cases.append({"response": response, "gold": gold,
                      # numbers as repr() strings: JSON has no NaN
                      "parsed": sorted([{"number": repr(p)} if isinstance(p, float) else {"text": p} for p in parsed],
                                       key=lambda d: json.dumps(d)),
                      "correct": bool(mmmu.eval_open(gold, parsed))})
    return {"source": "MMMU mmmu/utils/eval_utils.py parse_open_response + eval_open", "cases": cases}


# --------------------------------------------------------------------------------------------------------
# Exact match
# --------------------------------------------------------------------------------------------------------

EXACT_CASES = [
    ("same", "2", ["2"]), ("word-number", "Two.", ["2"]), ("case", "Yes", ["yes"]), ("article", "the dog", ["dog"]),
    ("spaces", " dog ", ["dog"]), ("multi", "cat", ["dog", "cat"]), ("contraction", "dont", ["don't"]),
    ("different", "cat", ["dog"]), ("hyphen", "t-shirt", ["t shirt"]),
]


def exact_fixture(pix2struct, vqa):
    ev = vqa.VQAEval(Gt({}), Gt({}))

    def norm(s):  # the official prediction normalisation: whitespace, punctuation, digits/articles
        s = s.replace("\n", " ").replace("\t", " ").strip()
        return ev.processDigitArticle(ev.processPunctuation(s))

    cases = []
    for name, pred, gts in EXACT_CASES:
        raw = pix2struct.aggregate_metrics(targets=[gts], predictions=[pred], metric_fn=lambda x, y: x == y) / 100.0
        normed = float(any(norm(g) == norm(pred) for g in gts))
        cases.append({"id": name, "prediction": pred, "answers": gts, "raw": raw, "vqa_normalized": normed})
    return {"source": {"raw": "pix2struct/metrics.py aggregate_metrics(metric_fn=x == y)",
                       "vqa_normalized": "vqaEval.py (HEAD) processPunctuation+processDigitArticle on both sides"},
            "cases": cases}


# --------------------------------------------------------------------------------------------------------
# CIDEr-D on pre-tokenised captions
# --------------------------------------------------------------------------------------------------------

CIDER_CORPUS = [
    ("img1", "a cat sitting on a mat", ["a cat sits on a mat", "a cat on a mat", "a small cat resting on a rug"]),
    ("img2", "two dogs playing in the park", ["two dogs play in a park", "dogs running on grass",
                                              "two brown dogs playing together outside"]),
    ("img3", "a man riding a bike", ["a man rides a bicycle down the street", "a person on a bike"]),
    ("img4", "", ["a red car parked on the street", "a car parked by the curb"]),
    ("img5", "dog", ["a dog", "a dog lying on a couch"]),
    ("img6", "a a a a a a", ["a plate of food on a table", "food on a white plate"]),
    ("img7", "a plate of food on a table", ["a plate of food on a table", "a plate with food"]),
    ("img8", "a cat on a mat -lrb- red -rrb-", ["a cat on a red mat"]),
]


def cider_fixture(coco_git, tmp):
    pkg = os.path.join(tmp, "cocoeval_cider")
    os.makedirs(pkg, exist_ok=True)
    for f in ("cider.py", "cider_scorer.py"):
        with open(os.path.join(pkg, f), "w") as fh:
            fh.write(git_show(coco_git, "HEAD", f"cider/{f}"))
    open(os.path.join(pkg, "__init__.py"), "w").close()
    from cocoeval_cider.cider import Cider
    gts = {k: refs for k, _, refs in CIDER_CORPUS}
    res = {k: [cand] for k, cand, _ in CIDER_CORPUS}
    mean, scores = Cider().compute_score(gts, res)
    return {"source": f"salaniz/pycocoevalcap {git_head(coco_git)} cider/cider.py Cider().compute_score "
                      "on pre-tokenised captions (PTB tokenizer skipped: needs Java)",
            "images": [{"id": k, "candidate": c, "references": r, "score": float(s)}
                       for (k, c, r), s in zip(CIDER_CORPUS, scores)],
            "mean": float(mean)}, Cider


# --------------------------------------------------------------------------------------------------------
# A predictions file and the official scores of it
# --------------------------------------------------------------------------------------------------------

def predictions_fixture(vqa, mmmu, pix2struct, cider_cls):
    from anls import anls_score
    preds = []
    for name, pred, answers in VQA_CASES:
        preds.append({"id": name, "task": "vqav2", "metric": "vqa_accuracy", "question": "q?",
                      "prompt": "q?\nGive a very brief answer.", "prediction": pred, "answers": answers})
    for name, pred, gts in ANLS_CASES:
        if name == "empty-both":
            continue
        preds.append({"id": name, "task": "docvqa", "metric": "anls", "question": "q?", "prompt": "",
                      "prediction": pred, "answers": gts})
    for name, pred, targets in RELAXED_CASES:
        preds.append({"id": name, "task": "chartqa", "metric": "relaxed_accuracy", "question": "q?", "prompt": "",
                      "prediction": pred, "answers": targets})
    golds = "ABCDABCDABCD"
    for i, r in enumerate(CHOICE_RESPONSES):
        preds.append({"id": f"mc{i}", "task": "mmmu", "metric": "multiple_choice", "question": "q?", "prompt": "",
                      "prediction": r, "answers": [golds[i % len(golds)]], "choices": CHOICE_OPTIONS})
    for i, (response, gold) in enumerate(OPEN_CASES):
        preds.append({"id": f"open{i}", "task": "mmmu_open_questions", "metric": "mmmu_open", "question": "q?",
                      "prompt": "", "prediction": response, "answers": gold})
    for k, cand, refs in CIDER_CORPUS:
        preds.append({"id": k, "task": "coco", "metric": "cider_pretokenized", "question": "", "prompt": "",
                      "prediction": cand, "answers": refs})

    # Official scores, each by its official scorer over the same records.
    import io
    vqa_p = [p for p in preds if p["task"] == "vqav2"]
    qa = {i: {"question_type": "t", "answer_type": "other",
              "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(p["answers"])]}
          for i, p in enumerate(vqa_p)}
    ev = vqa.VQAEval(Gt(qa), Gt({i: {"answer": p["prediction"]} for i, p in enumerate(vqa_p)}), n=2)
    stdout, sys.stdout = sys.stdout, io.StringIO()
    try:
        ev.evaluate()
    finally:
        sys.stdout = stdout
    doc = [p for p in preds if p["task"] == "docvqa"]
    chart = [p for p in preds if p["task"] == "chartqa"]
    mc = [p for p in preds if p["task"] == "mmmu"]
    letters = ["A", "B", "C", "D"]
    mmmu.random.choice = lambda seq: None
    mc_correct = 0
    for p in mc:
        parsed = mmmu.parse_multi_choice_response(p["prediction"], letters, dict(zip(letters, p["choices"])))
        mc_correct += parsed is not None and mmmu.eval_multi_choice(p["answers"][0], parsed)
    open_p = [p for p in preds if p["task"] == "mmmu_open_questions"]
    open_correct = sum(bool(mmmu.eval_open(p["answers"], mmmu.parse_open_response(p["prediction"]))) for p in open_p)
    coco = [p for p in preds if p["task"] == "coco"]
    cider_mean, _ = cider_cls().compute_score({p["id"]: p["answers"] for p in coco},
                                              {p["id"]: [p["prediction"]] for p in coco})
    expected = {
        "vqav2": {"metric": "vqa_accuracy", "score": ev.accuracy["overall"], "rounded_to": 2, "count": len(vqa_p),
                  "scorer": "vqaEval.py HEAD VQAEval(n=2).accuracy['overall']"},
        "docvqa": {"metric": "anls", "count": len(doc),
                   "score": 100.0 * sum(anls_score(prediction=p["prediction"], gold_labels=p["answers"], threshold=0.5)
                                        for p in doc) / len(doc), "scorer": "anls.anls_score mean x100"},
        "chartqa": {"metric": "relaxed_accuracy", "count": len(chart),
                    "score": pix2struct.aggregate_metrics(targets=[p["answers"] for p in chart],
                                                          predictions=[p["prediction"] for p in chart],
                                                          metric_fn=pix2struct.relaxed_correctness),
                    "scorer": "pix2struct aggregate_metrics(metric_fn=relaxed_correctness)"},
        "mmmu": {"metric": "multiple_choice", "count": len(mc), "score": 100.0 * mc_correct / len(mc),
                 "scorer": "MMMU parse_multi_choice_response + eval_multi_choice (random fallback -> wrong)"},
        "mmmu_open_questions": {"metric": "mmmu_open", "count": len(open_p), "score": 100.0 * open_correct / len(open_p),
                                "scorer": "MMMU parse_open_response + eval_open"},
        "coco": {"metric": "cider_pretokenized", "count": len(coco), "score": 100.0 * float(cider_mean),
                 "scorer": "pycocoevalcap Cider().compute_score x100"},
    }
    return preds, expected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vqa", required=True)
    ap.add_argument("--mmmu", required=True)
    ap.add_argument("--pix2struct", required=True)
    ap.add_argument("--coco", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    vqa_git, mmmu_git, p2s_git, coco_git = map(git_dir_of, (args.vqa, args.mmmu, args.pix2struct, args.coco))
    os.makedirs(args.out, exist_ok=True)
    versions = {"python": sys.version.split()[0],
                **{p: importlib.metadata.version(p) for p in ("anls", "editdistance", "numpy", "pycocoevalcap")},
                "MMMU": git_head(mmmu_git), "pix2struct": git_head(p2s_git), "pycocoevalcap_git": git_head(coco_git),
                "VQA": git_head(vqa_git)}
    with tempfile.TemporaryDirectory() as tmp:
        vqa_json, vqa_current = vqa_fixture(vqa_git, tmp)
        pix2struct = load_module(tmp, "pix2struct_metrics", git_show(p2s_git, "HEAD", "pix2struct/metrics.py"))
        mmmu = load_module(tmp, "mmmu_eval_utils", git_show(mmmu_git, "HEAD", "mmmu/utils/eval_utils.py"))
        cider_json, cider_cls = cider_fixture(coco_git, tmp)
        fixtures = {
            "vqa.json": vqa_json,
            "anls.json": anls_fixture(pix2struct),
            "relaxed.json": relaxed_fixture(pix2struct),
            "choice.json": choice_fixture(mmmu),
            "open.json": open_fixture(mmmu),
            "exact.json": exact_fixture(pix2struct, vqa_current),
            "cider.json": cider_json,
        }
        preds, expected = predictions_fixture(vqa_current, mmmu, pix2struct, cider_cls)
    for name, data in fixtures.items():
        data["versions"] = versions
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
    with open(os.path.join(args.out, "predictions.jsonl"), "w") as f:
        for p in preds:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "predictions_official_scores.json"), "w") as f:
        json.dump({"versions": versions, "tasks": expected}, f, indent=1)
        f.write("\n")
    print("wrote", sorted(list(fixtures) + ["predictions.jsonl", "predictions_official_scores.json"]))


if __name__ == "__main__":
    main()
