"""NGSS scoring data: the nine tasks, a synthetic generator, the lab's CSV format and rubric metrics.

Each NGSS task is multi-label: a student's written explanation earns a set of binary
rubric elements (E1, E2, ...). Schools are the federated clients. The real PASTA
responses are not public, so `generate` writes synthetic ones whose sizes, label
prevalences, co-occurrence, lengths and school differences follow NGSS.md; real data
comes in through `load_csv` in the lab's own format. Numpy and the stdlib only, no
torch: the app imports this on every page.

    data = generate("gas_filled_balloons", seed=0)     # NgssDataset, source "synthetic"
    data.train.texts[0], data.train.labels.shape       # str, (958, 3) int8: 0/1, -1 = unscored
    data.train.schools, data.school_names              # (958,) int, ["School A", ...]
    write_csv(data, "out")                             # out/gas_filled_balloons_{train,test}.csv
    real = load_csv("lab/gas_filled_balloons_train.csv")   # sibling _test.csv if present
    preds = predictions_from_probabilities(probs)      # (N, K) sigmoid outputs -> 0/1
    rubric_metrics(preds, data.test.labels, groups=data.test.schools, group_names=data.school_names)
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ngss.csv_format import CsvImportError, load_csv, write_csv
from ngss.metrics import predictions_from_probabilities, rubric_metrics
from ngss.phrases import BANKS, COMMON_FILLERS, COMMON_SLOTS, CONNECTORS, FRAGMENT_DROPS, GENERIC_NON_ANSWERS, MISSPELLINGS
from ngss.tasks import NgssDataset, NgssElement, NgssSplit, NgssTask, TASKS

__all__ = [
    "TASKS", "NgssElement", "NgssTask", "NgssSplit", "NgssDataset", "generate", "CsvImportError", "load_csv",
    "write_csv", "predictions_from_probabilities", "rubric_metrics",
]

# ----------------------------------------------------------------------------- generator

# Words per response, (mean, SD). Anna vs Carla: published (47.8, 30.9). Gas Filled
# Balloons: "about 150 characters" published, ≈ 27 words. The others: assumed.
_LENGTH_WORDS: dict[str, tuple[float, float]] = {
    "anna_vs_carla": (47.8, 30.9),
    "breaking_down_hydrogen_peroxide": (38.0, 24.0),
    "carlos_javier_atomic_model": (40.0, 25.0),
    "dry_ice_model": (36.0, 22.0),
    "gas_filled_balloons": (27.0, 13.0),
    "layers_in_test_tube": (58.0, 32.0),
    "model_for_making_water": (38.0, 24.0),
    "namis_careful_experiment": (45.0, 27.0),
    "natural_sugar": (40.0, 25.0),
}
# Gaussian-copula loadings on one latent "understanding" per student: labels correlate,
# and the claim carries the most, so evidence elements mostly come with the claim.
_CLAIM_LOADING, _EVIDENCE_LOADING = 0.9, 0.75
# Teacher scaffolding: logit shift per SD of a school's scaffolding, plus per-element spread.
# 0.35 in logit is ≈ ±30% relative prevalence at moderate prevalences.
_SCAFFOLDING_LOGIT, _ELEMENT_LOGIT = 0.35, 0.15
_MAX_NEAR_MISSES = 2  # per response


@dataclass(frozen=True)
class _SchoolStyle:
    """How one school's students write and how its raters score (drawn once per seed)."""

    share: float  # fraction of the task's responses
    scaffolding: float  # N(0, 1); shifts all element prevalences together
    paper: bool  # paper answers, transcribed: shorter, fragments, more typos
    casual: float  # probability of casual register (slot variants, lower case, loose punctuation)
    misspelling_rate: float  # per word of 4+ letters
    length_factor: float  # relative answer length; share-weighted mean 1
    non_answer_rate: float
    near_miss_rate: float  # per unearned element: keywords without the reasoning
    noise_rate: float  # annotation drift: minority-class flip probability per element
    lenient: bool  # raters credit near-misses (0 -> 1 flips land on keyword-only answers)


def _school_styles(seed: int, num_schools: int) -> list[_SchoolStyle]:
    """The schools of one seed; the same nine schools answer every task."""
    rng = np.random.default_rng([seed, 0])
    shares = rng.lognormal(0.0, 0.45, num_schools)
    shares = np.maximum(shares / shares.sum(), 0.3 / num_schools)
    shares /= shares.sum()
    paper = rng.random(num_schools) < 0.4
    length = np.where(paper, rng.uniform(0.55, 0.8, num_schools), rng.uniform(1.0, 1.35, num_schools))
    length /= float(np.dot(length, shares))
    return [
        _SchoolStyle(
            share=float(shares[s]),
            scaffolding=float(np.clip(rng.standard_normal(), -2.0, 2.0)),
            paper=bool(paper[s]),
            casual=float(np.clip(rng.beta(2.0, 3.0) + 0.2 * paper[s], 0.0, 1.0)),
            misspelling_rate=float(rng.uniform(0.02, 0.07) if paper[s] else rng.uniform(0.0, 0.03)),
            length_factor=float(length[s]),
            non_answer_rate=float(rng.uniform(0.01, 0.045) + 0.015 * paper[s]),
            near_miss_rate=float(rng.uniform(0.15, 0.35)),
            noise_rate=float(rng.uniform(0.02, 0.08)),
            lenient=bool(rng.random() < 0.5),
        )
        for s in range(num_schools)
    ]


def _assign_schools(rng: np.random.Generator, size: int, shares: np.ndarray) -> np.ndarray:
    """(size,) school index per row: counts proportional to shares (largest remainder), shuffled."""
    exact = shares * size
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: size - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _school_prevalence(
    rng: np.random.Generator, prevalence: np.ndarray, styles: list[_SchoolStyle], weights: np.ndarray
) -> np.ndarray:
    """(S, K) prevalence per school: logit shifts from scaffolding, recentred so that the
    `weights`-weighted mean over schools is exactly the task's prevalence per element."""
    scaffolding = np.array([style.scaffolding for style in styles])
    element_noise = rng.standard_normal((len(styles), len(prevalence)))
    shift = _SCAFFOLDING_LOGIT * scaffolding[:, None] + _ELEMENT_LOGIT * element_noise
    base = np.log(prevalence / (1.0 - prevalence)) + shift
    low, high = np.full(len(prevalence), -6.0), np.full(len(prevalence), 6.0)
    for _ in range(60):  # bisection on the per-element offset; the mean is monotone in it
        mid = (low + high) / 2
        too_high = weights @ _sigmoid(base + mid) > prevalence
        high, low = np.where(too_high, mid, high), np.where(too_high, low, mid)
    return _sigmoid(base + (low + high) / 2)


def _sample_labels(
    rng: np.random.Generator, school_prevalence: np.ndarray, schools: np.ndarray, claim_index: int
) -> np.ndarray:
    """(N, K) int8 true labels: a Gaussian copula over one latent ability per student.

    Each school's threshold is the empirical quantile of its latent scores, so a school's
    count of positives is its prevalence times its size, rounded: the task-level
    prevalence then matches the table up to rounding and rater noise, for any seed.
    """
    num_rows, num_labels = len(schools), school_prevalence.shape[1]
    loadings = np.full(num_labels, _EVIDENCE_LOADING)
    loadings[claim_index] = _CLAIM_LOADING
    latent = rng.standard_normal(num_rows)[:, None] * loadings
    latent += np.sqrt(1.0 - loadings**2) * rng.standard_normal((num_rows, num_labels))
    labels = np.zeros((num_rows, num_labels), dtype=np.int8)
    for school, prevalence in enumerate(school_prevalence):
        rows = np.flatnonzero(schools == school)
        positives = np.round(prevalence * len(rows)).astype(int)  # (K,)
        ranks = np.argsort(np.argsort(-latent[rows], axis=0), axis=0)  # 0 = highest latent score
        labels[rows] = ranks < positives
    return labels


def _non_answer_rows(
    rng: np.random.Generator, labels: np.ndarray, schools: np.ndarray, styles: list[_SchoolStyle]
) -> np.ndarray:
    """(N,) bool: non-answers, drawn among rows that earn nothing so prevalences are untouched."""
    blank = labels.sum(axis=1) == 0
    probability = np.zeros(len(styles))
    for school, style in enumerate(styles):
        blank_share = blank[schools == school].mean() if np.any(schools == school) else 0.0
        probability[school] = min(1.0, style.non_answer_rate / blank_share) if blank_share > 0 else 0.0
    return blank & (rng.random(len(schools)) < probability[schools])


def _annotation_noise(
    rng: np.random.Generator,
    labels: np.ndarray,
    near_miss: np.ndarray,
    non_answer: np.ndarray,
    schools: np.ndarray,
    styles: list[_SchoolStyle],
) -> np.ndarray:
    """Rater drift per school: flip minority-class labels with the school's rate and the same
    expected number of majority-class labels back, so prevalence is kept. Lenient schools'
    0 -> 1 flips fall mostly on near-misses; non-answers are never credited."""
    noisy = labels.copy()
    for school, style in enumerate(styles):
        rows = np.flatnonzero(schools == school)
        if len(rows) == 0:
            continue
        for k in range(labels.shape[1]):
            y = labels[rows, k]
            minority = int(y.mean() <= 0.5)
            rate = style.noise_rate * rng.uniform(0.5, 1.5)
            creditable = (y == 1) | ~non_answer[rows]  # a 0 -> 1 flip never lands on a non-answer
            from_minority = (rng.random(len(rows)) < rate * (y == minority)) & creditable
            candidates = (y != minority) & creditable
            weight = candidates * (1.0 + 4.0 * (style.lenient and minority == 0) * near_miss[rows, k])
            expected = rate * np.sum(y == minority)
            to_minority = rng.random(len(rows)) < np.minimum(1.0, expected * weight / max(weight.sum(), 1e-12))
            flip = from_minority | to_minority
            noisy[rows[flip], k] = 1 - y[flip]
    return noisy


class _Writer:
    """Writes one school's responses to one task, with that school's preferred words."""

    def __init__(
        self, task: NgssTask, style: _SchoolStyle, rng: np.random.Generator, preference_rng: np.random.Generator
    ) -> None:
        self.task, self.style, self.rng, self.preference_rng = task, style, rng, preference_rng
        self.bank = BANKS[task.slug]
        self.slots = {**COMMON_SLOTS, **self.bank.slots}
        self.claim_index = task.label_ids.index(task.claim_label)
        mean_words, sd_words = _LENGTH_WORDS[task.slug]
        self.length_sigma = math.sqrt(math.log1p((sd_words / mean_words) ** 2))
        self.mean_words = mean_words * style.length_factor
        self._cumulative: dict[tuple, list[float]] = {}

    def pick(self, key: tuple, options: Sequence[str]) -> str:
        """One option, with this school's preferences (a Dirichlet draw per bank, made on first use)."""
        cumulative = self._cumulative.get(key)
        if cumulative is None:
            cumulative = np.cumsum(self.preference_rng.dirichlet(np.full(len(options), 0.8))).tolist()
            self._cumulative[key] = cumulative
        index = bisect.bisect_right(cumulative, self.rng.random() * cumulative[-1])
        return options[min(index, len(options) - 1)]

    def fill(self, template: str) -> str:
        def variant(match: re.Match) -> str:
            formal, casual = self.slots[match.group(1)]
            register = "casual" if self.rng.random() < self.style.casual else "formal"
            options = casual if register == "casual" else formal
            return self.pick(("slot", match.group(1), register), options)

        return re.sub(r"\{(\w+)\}", variant, template)

    def clause(self, kind: str, label: str, options: Sequence[str]) -> str:
        return self.fill(self.pick((kind, label), options))

    def non_answer(self) -> str:
        if self.bank.bare and self.rng.random() < 0.4:
            return self.pick(("bare",), self.bank.bare)
        return self.pick(("non_answer",), GENERIC_NON_ANSWERS)

    def response(self, labels: np.ndarray) -> tuple[str, np.ndarray]:
        """One response expressing exactly the elements in `labels` (K,); also (K,) bool near-misses."""
        near_miss = np.zeros(len(labels), dtype=bool)
        claim_label = self.task.claim_label
        evidence: list[str] = []
        for k, label in enumerate(self.task.label_ids):
            if k == self.claim_index:
                continue
            if labels[k]:
                evidence.append(self.clause("positive", label, self.bank.positive[label]))
            elif near_miss.sum() < _MAX_NEAR_MISSES and self.rng.random() < self.style.near_miss_rate:
                evidence.append(self.clause("near_miss", label, self.bank.near_miss[label]))
                near_miss[k] = True
        if len(evidence) > 1 and self.rng.random() < 0.3:
            evidence = [evidence[i] for i in self.rng.permutation(len(evidence))]
        claim = None
        if labels[self.claim_index]:
            claim = self.clause("positive", claim_label, self.bank.positive[claim_label])
        elif self.bank.wrong_claim and self.rng.random() < (0.3 if any(labels) else 0.65):
            claim = self.clause("wrong_claim", claim_label, self.bank.wrong_claim)
        elif self.rng.random() < self.style.near_miss_rate:
            claim = self.clause("near_miss", claim_label, self.bank.near_miss[claim_label])
            near_miss[self.claim_index] = True
        return self.render(self.sentences(claim, evidence)), near_miss

    def sentences(self, claim: str | None, evidence: list[str]) -> list[str]:
        """Claim and evidence as sentences ("claim because evidence", connectors), padded with fillers."""
        sentences = []
        if claim is not None and evidence and self.rng.random() < 0.6:
            sentences.append(f"{claim} {self.fill('{because}')} {evidence.pop(0)}")
        elif claim is not None:
            sentences.append(claim)
        for clause in evidence:
            casual = self.rng.random() < self.style.casual
            sentences.append(self.pick(("connector", casual), CONNECTORS[casual]) + clause)
        target = self.mean_words * math.exp(self.length_sigma * self.rng.standard_normal() - self.length_sigma**2 / 2)
        words = sum(len(s.split()) for s in sentences)
        task_fillers, common_fillers = self.bank.fillers, COMMON_FILLERS
        order = [task_fillers[i] for i in self.rng.permutation(len(task_fillers))]
        order += [common_fillers[i] for i in self.rng.permutation(len(common_fillers))]  # only the longest answers
        for template in order:
            filler = self.fill(template)
            if sentences and words + len(filler.split()) / 2 >= target:
                break
            at_start = not sentences or self.rng.random() < 0.25
            sentences.insert(0 if at_start else len(sentences), filler)
            words += len(filler.split())
        return sentences

    def render(self, sentences: list[str]) -> str:
        """Register, fragments (paper), misspellings and punctuation."""
        casual = self.rng.random() < self.style.casual
        rendered = []
        for sentence in sentences:
            words = sentence.split()
            if self.style.paper and self.rng.random() < 0.5:
                kept = [w for w in words if w.lower() not in FRAGMENT_DROPS or self.rng.random() < 0.6]
                words = kept if len(kept) >= 2 else words
            words = [self.misspell(w) if self.rng.random() < self.style.misspelling_rate else w for w in words]
            sentence = " ".join(words)
            sentence = sentence.lower() if casual and self.rng.random() < 0.7 else sentence[:1].upper() + sentence[1:]
            rendered.append(sentence)
        if self.style.paper and self.rng.random() < 0.5:  # one run-on line
            return ", ".join([rendered[0]] + [s if s.startswith("I ") else s[:1].lower() + s[1:] for s in rendered[1:]])
        if casual:
            return " ".join(s + self.pick(("punctuation",), (".", ",", "", ".")) for s in rendered).rstrip(",")
        return " ".join(s + "." for s in rendered)

    def misspell(self, word: str) -> str:
        if len(word) < 4 or not word.isalpha():
            return word
        known = MISSPELLINGS.get(word.lower())
        if known and self.rng.random() < 0.7:
            return known[int(self.rng.integers(len(known)))]
        i = int(self.rng.integers(1, len(word) - 1))
        edit = int(self.rng.integers(3))
        if edit == 0:  # dropped letter
            return word[:i] + word[i + 1 :]
        if edit == 1:  # doubled letter
            return word[:i] + word[i] + word[i:]
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]  # swapped letters


def _school_names(num_schools: int) -> list[str]:
    return [f"School {chr(ord('A') + s)}" for s in range(num_schools)]


def _task_or_raise(task: str) -> NgssTask:
    if task not in TASKS:
        raise ValueError(f"unknown NGSS task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


def generate(task: str, *, seed: int, num_schools: int = 9) -> NgssDataset:
    """Synthetic responses for one task at the published sizes, split over `num_schools` schools.

    Labels follow the task's test prevalence (the same distribution in train and test),
    co-occur through one latent ability per student, and shift by school (teacher
    scaffolding, ≈ ±30% relative). Texts are composed from the task's phrase banks with
    each school's vocabulary, register, misspelling rate and answer length; a few percent
    are non-answers (all 0) and a few percent of labels carry the school's rater drift.
    Deterministic in `seed` (>= 0); the schools depend on the seed only, not on the task.
    """
    spec = _task_or_raise(task)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1 <= num_schools <= 26:
        raise ValueError(f"num_schools must be between 1 and 26, got {num_schools}")
    styles = _school_styles(seed, num_schools)
    task_index = list(TASKS).index(task)
    rng = np.random.default_rng([seed, 1, task_index])
    shares = np.array([style.share for style in styles])
    schools = np.concatenate([_assign_schools(rng, size, shares) for size in (spec.train_size, spec.test_size)])
    realized_shares = np.bincount(schools, minlength=num_schools) / len(schools)
    prevalence = _school_prevalence(rng, np.array(spec.test_prevalence), styles, realized_shares)
    claim_index = spec.label_ids.index(spec.claim_label)
    labels = _sample_labels(rng, prevalence, schools, claim_index)
    non_answer = _non_answer_rows(rng, labels, schools, styles)
    preference_rng = np.random.default_rng([seed, 2, task_index])
    writers = [_Writer(spec, style, rng, preference_rng) for style in styles]
    texts, near_miss = [], np.zeros(labels.shape, dtype=bool)
    for row, school in enumerate(schools):
        if non_answer[row]:
            texts.append(writers[school].non_answer())
        else:
            text, near_miss[row] = writers[school].response(labels[row])
            texts.append(text)
    labels = _annotation_noise(rng, labels, near_miss, non_answer, schools, styles)
    cut = spec.train_size
    return NgssDataset(
        task=task,
        label_names=list(spec.label_ids),
        source="synthetic",
        school_names=_school_names(num_schools),
        train=NgssSplit(texts[:cut], labels[:cut], schools[:cut].astype(np.int64)),
        test=NgssSplit(texts[cut:], labels[cut:], schools[cut:].astype(np.int64)),
    )
