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
import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngss_phrases import BANKS, COMMON_FILLERS, COMMON_SLOTS, CONNECTORS, FRAGMENT_DROPS, GENERIC_NON_ANSWERS, MISSPELLINGS

# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class NgssElement:
    """One rubric element. `source`: "sourced" (published rubric) or "inferred" (reconstruction)."""

    label: str
    meaning: str
    source: str


@dataclass(frozen=True)
class NgssTask:
    """One NGSS task as published (NGSS.md). Prevalences are the test split's, aligned with `label_ids`.

    `prevalence_source` is "published" or "assumed" (Gas Filled Balloons: not published,
    our plausible values). `prompt_source` is "sourced" or "inferred" (a reconstruction,
    editable metadata). The claim element (`claim_label`) is the one evidence elements
    mostly co-occur with.
    """

    slug: str
    title: str
    label_ids: tuple[str, ...]
    train_size: int
    test_size: int
    test_prevalence: tuple[float, ...]
    prevalence_source: str
    prompt: str
    prompt_source: str
    elements: tuple[NgssElement, ...]
    claim_label: str = "E1"

    @property
    def num_labels(self) -> int:
        return len(self.label_ids)


def _task(
    slug: str,
    title: str,
    sizes: tuple[int, int],
    prevalence: tuple[float, ...],
    prompt: str,
    prompt_source: str,
    elements: tuple[tuple[str, str], ...],
    *,
    prevalence_source: str = "published",
    elements_source: str = "inferred",
) -> NgssTask:
    label_ids = tuple(label for label, _ in elements)
    return NgssTask(
        slug=slug,
        title=title,
        label_ids=label_ids,
        train_size=sizes[0],
        test_size=sizes[1],
        test_prevalence=tuple(prevalence),
        prevalence_source=prevalence_source,
        prompt=prompt,
        prompt_source=prompt_source,
        elements=tuple(NgssElement(label, meaning, elements_source) for label, meaning in elements),
    )


TASKS: dict[str, NgssTask] = {
    task.slug: task
    for task in (
        _task(
            "anna_vs_carla", "Anna vs Carla", (955, 239), (0.84, 0.07, 0.15, 0.04),
            "Anna and Carla each have a solid sample. Anna says the two samples are the same substance; "
            "Carla says they are different substances because their mass, volume and shape differ. The table "
            "lists mass, volume, shape, density (2.7 g/cm3 for both) and melting point (660 °C for both). "
            "Who is right? Use the data to explain.",
            "inferred",
            (("E1", "claims the right student (Anna: same substance)"),
             ("E2", "cites a property pattern in the data (same density / melting point)"),
             ("E4", "names characteristic properties (density, melting point) as what identifies a substance"),
             ("E5", "rejects non-characteristic properties (mass, volume, shape)")),
        ),
        _task(
            "breaking_down_hydrogen_peroxide", "Breaking Down Hydrogen Peroxide", (666, 167), (0.56, 0.41, 0.20, 0.10),
            "Hydrogen peroxide (H2O2) is poured into a flask with a little yeast. Bubbles form and a glowing "
            "splint held above the flask relights. Does hydrogen peroxide break down into new substances? "
            "Use the evidence and what happens to the atoms to explain.",
            "inferred",
            (("E1", "new substances (water, oxygen) are formed"),
             ("E2", "evidence: bubbles / gas, changed properties"),
             ("E3", "atoms are rearranged into new molecules"),
             ("E4", "atoms are conserved (none created or destroyed)")),
        ),
        _task(
            "carlos_javier_atomic_model", "Carlos Javier Atomic Model", (956, 240), (0.67, 0.51, 0.18, 0.16, 0.50),
            "Carlos and Javier each drew a particle model of water. Carlos drew each water molecule as one "
            "oxygen atom joined to two hydrogen atoms; Javier drew hydrogen and oxygen atoms as separate, "
            "unjoined particles. Whose model better shows water? Explain using the atoms.",
            "inferred",
            (("E1", "picks the right model (Carlos)"),
             ("E2", "right number and type of atoms (two H, one O)"),
             ("E3", "atoms are bonded together as molecules"),
             ("E4", "a limitation of the model (scale, colour, motion)"),
             ("E5", "the structure of the molecule is linked to the substance's identity")),
        ),
        _task(
            "dry_ice_model", "Dry Ice Model", (1111, 278), (0.24, 0.19, 0.19),
            "A piece of dry ice (solid carbon dioxide, CO2) sits on a plate at room temperature. It gets "
            "smaller and a foggy gas comes off, but no liquid forms. Develop a particle model and explain "
            "what happens to the carbon dioxide molecules.",
            "inferred",
            (("E1", "same substance: the molecules are still CO2"),
             ("E2", "particles gain thermal energy, move faster and spread apart"),
             ("E4", "phase change from solid directly to gas (sublimation)")),
        ),
        _task(
            "gas_filled_balloons", "Gas Filled Balloons", (958, 240), (0.60, 0.45, 0.25),
            "Four balloons are filled with gases A-D. A table gives each gas's flammability and density "
            "(A: flammable, 0.089 g/L; B: not flammable, 1.422 g/L; C: not flammable, 1.981 g/L; D: flammable, "
            "0.089 g/L) and the balloon's volume. Which, if any, of the gases could be the same substance? "
            "Explain.",
            "sourced",
            (("E1", "claim: gases A and D could be the same substance (SEP+DCI)"),
             ("E2", "data pattern: A and D share flammability and density (SEP+CCC)"),
             ("E3", "characteristic property: flammability and density identify a substance (DCI)")),
            prevalence_source="assumed",
            elements_source="sourced",
        ),
        _task(
            "layers_in_test_tube", "Layers in Test Tube", (956, 240),
            (0.76, 0.39, 0.51, 0.48, 0.48, 0.22, 0.18, 0.23, 0.24, 0.10),
            "Two substances are mixed and heated in a test tube; afterwards, layers appear. Did a chemical "
            "reaction occur? (Inferred table: substance 1 density 0.79 g/cm3, melting point -114 °C, soluble "
            "in water, sharp smell; substance 2 density 1.05, melting point 17 °C, soluble, vinegar smell; "
            "top layer density 0.90, melting point -84 °C, insoluble, fruity smell; bottom layer density "
            "1.00, melting point 0 °C, soluble, no smell.)",
            "sourced",
            (("E1", "claim: a chemical reaction occurred"),
             ("E2", "compares density before and after"),
             ("E3", "compares melting point before and after"),
             ("E4", "compares solubility before and after"),
             ("E5", "compares colour / odour before and after"),
             ("E6", "the top layer's properties differ from the starting substances"),
             ("E7", "the bottom layer's properties differ from the starting substances"),
             ("E8", "neither layer matches a starting substance (both layers together)"),
             ("E9", "different properties mean a different substance"),
             ("E10", "atoms regroup into new molecules")),
        ),
        _task(
            "model_for_making_water", "Model For Making Water", (836, 210), (0.22, 0.24, 0.42, 0.21, 0.13),
            "Hydrogen gas (H2) and oxygen gas (O2) react to make water (H2O). Make a particle model of the "
            "reaction and explain what happens to the atoms and molecules.",
            "inferred",
            (("E1", "right reactant molecules (H2, O2 as bonded pairs)"),
             ("E2", "right product molecules (H2O: one O bonded to two H)"),
             ("E3", "atoms regroup into new molecules"),
             ("E4", "atoms are conserved"),
             ("E5", "water's properties differ from the reactants'")),
        ),
        _task(
            "namis_careful_experiment", "Nami's Careful Experiment", (653, 164),
            (0.80, 0.54, 0.70, 0.18, 0.23, 0.15),
            "Nami mixes two clear liquids in a beaker, keeping the temperature and amounts the same, and "
            "records properties before and after. After mixing a white solid forms. Her table shows colour, "
            "density, melting point and mass. Did Nami make a new substance? Explain.",
            "inferred",
            (("E1", "claim: a new substance formed"),
             ("E2", "compares density before and after"),
             ("E3", "compares colour / state / melting point before and after"),
             ("E4", "the new substance has different characteristic properties"),
             ("E5", "atoms regroup into new molecules"),
             ("E7", "addresses controls / non-characteristic properties (mass, temperature)")),
        ),
        _task(
            "natural_sugar", "Natural Sugar", (956, 239), (0.35, 0.33, 0.44, 0.21, 0.20),
            "A company makes sugar in a lab. A table compares natural sugar from sugar cane with lab-made "
            "sugar: colour (white, white), melting point (186 °C, 186 °C), density (1.59 g/cm3, 1.59 g/cm3), "
            "solubility in water (yes, yes) and sample mass (10 g, 25 g). Are they the same substance? Explain.",
            "inferred",
            (("E1", "claim: natural and lab-made sugar are the same substance"),
             ("E2", "evidence: the melting points match"),
             ("E3", "evidence: density / solubility match"),
             ("E4", "characteristic properties (melting point, density) identify a substance"),
             ("E5", "source, amount or mass do not change the substance")),
        ),
    )
}


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True, eq=False)
class NgssSplit:
    """One split. texts: N responses; labels: (N, K) int8 in {0, 1, -1 (unscored)}; schools: (N,) int64."""

    texts: list[str]
    labels: np.ndarray
    schools: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class NgssDataset:
    """A task's train and test splits. `schools` index `school_names`; `source`: "synthetic" or "imported".

    `has_groups` is false for an imported file without a Group/school column: every row
    is then school 0 ("all") and the caller chooses an artificial partitioner.
    """

    task: str
    label_names: list[str]
    source: str
    school_names: list[str]
    train: NgssSplit
    test: NgssSplit
    has_groups: bool = True


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


# ----------------------------------------------------------------------------- CSV import / export


class CsvImportError(ValueError):
    """A CSV file that cannot be imported; the message names the file and, where it helps, the line/column."""


_LABEL_COLUMN = re.compile(r"[Ee]\d+")
_TEXT_COLUMNS = ("text", "response")
_GROUP_COLUMNS = ("group", "school")
_SPLIT_FILE = re.compile(r"(?P<slug>.+)_(?P<split>train|test)\.csv", re.IGNORECASE)


@dataclass(frozen=True)
class _Table:
    """One parsed file: texts, (N, K) int8 labels, label names, and group names per row (or None)."""

    name: str
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    groups: list[str] | None


def _read_text(source: str | Path | bytes, role: str, max_bytes: int) -> tuple[str, str]:
    """(display name, decoded text) of a path or uploaded bytes, size- and encoding-checked."""
    limit = f"{max_bytes / 2**20:.1f} MiB"
    if isinstance(source, (bytes, bytearray)):
        name, data = f"uploaded {role} file", bytes(source)
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.is_file():
            raise CsvImportError(f"{name}: no such file")
        if path.stat().st_size > max_bytes:
            raise CsvImportError(f"{name}: {path.stat().st_size / 2**20:.1f} MiB is over the {limit} limit")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise CsvImportError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {limit} limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CsvImportError(
            f"{name}: not UTF-8 text (invalid byte at offset {error.start}); save it as 'CSV UTF-8'"
        ) from None
    if not text.strip():  # after decoding: a byte-order mark alone is empty too
        raise CsvImportError(f"{name}: the file is empty")
    return name, text


def _label_value(name: str, line: int, column: str, cell: str) -> int:
    value = cell.strip()
    if value in ("0", "1", "-1"):
        return int(value)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0, -1.0):  # "1.0" from a spreadsheet
        return int(number)
    shown = repr(cell) if cell.strip() else "an empty cell"
    raise CsvImportError(f"{name}: line {line}, column {column}: {shown} is not 0, 1 or -1 (-1 = unscored)")


def _parse_table(name: str, text: str) -> _Table:
    """Validate and parse the lab's layout: text column, E* columns, optional Group/school column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [column.strip() for column in next(reader)]
        records = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise CsvImportError(f"{name}: line {reader.line_num}: not valid CSV ({error})") from None
    lowered = [column.lower() for column in header]
    label_columns = [i for i, column in enumerate(header) if _LABEL_COLUMN.fullmatch(column)]
    group_column = next((lowered.index(c) for c in _GROUP_COLUMNS if c in lowered), None)
    text_column = next((lowered.index(c) for c in _TEXT_COLUMNS if c in lowered), 0)
    if text_column in label_columns or text_column == group_column:
        raise CsvImportError(
            f"{name}: no text column: name it 'text' or 'response', or put the responses in the first column "
            f"(the header is {', '.join(header)})"
        )
    if not label_columns:
        raise CsvImportError(f"{name}: no rubric-element columns (E1, E2, ...) in the header {', '.join(header)}")
    label_names = [header[i].upper() for i in label_columns]
    if len(set(label_names)) < len(label_names):
        raise CsvImportError(f"{name}: a rubric-element column appears twice: {', '.join(label_names)}")
    if not records:
        raise CsvImportError(f"{name}: the file has a header but no rows")
    texts, labels, groups = [], np.zeros((len(records), len(label_columns)), dtype=np.int8), []
    for row_index, (line, row) in enumerate(records):
        if len(row) != len(header):
            raise CsvImportError(f"{name}: line {line}: {len(row)} field(s), but the header has {len(header)}")
        if not row[text_column].strip():
            raise CsvImportError(f"{name}: line {line}: empty response text in column {header[text_column]!r}")
        texts.append(row[text_column])
        for k, i in enumerate(label_columns):
            labels[row_index, k] = _label_value(name, line, header[i], row[i])
        if group_column is not None:
            group = row[group_column].strip()
            if not group:
                raise CsvImportError(f"{name}: line {line}: empty {header[group_column]!r} value")
            groups.append(group)
    return _Table(name, texts, labels, label_names, groups if group_column is not None else None)


def _matched_test(train: _Table, test: _Table) -> _Table:
    """The test table with its label columns in the train table's order; mismatches raise."""
    if set(test.label_names) != set(train.label_names):
        raise CsvImportError(
            f"{test.name}: rubric-element columns {', '.join(test.label_names)} differ from "
            f"{train.name}'s {', '.join(train.label_names)}"
        )
    if (train.groups is None) != (test.groups is None):
        with_groups, without = (train, test) if train.groups is not None else (test, train)
        raise CsvImportError(f"{without.name}: no Group/school column, but {with_groups.name} has one")
    order = [test.label_names.index(label) for label in train.label_names]
    return _Table(test.name, test.texts, test.labels[:, order], train.label_names, test.groups)


def _split_off_test(
    schools: np.ndarray, test_fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), sorted: `test_fraction` of each school (at least one row of
    any school with two or more), seeded."""
    rng = np.random.default_rng(seed)
    test_rows = []
    for school in np.unique(schools):
        rows = rng.permutation(np.flatnonzero(schools == school))
        count = min(max(round(len(rows) * test_fraction), 1), len(rows) - 1)
        test_rows.append(rows[:count])
    test = np.sort(np.concatenate(test_rows))
    if len(test) == 0:
        raise CsvImportError(f"{name}: too few rows to split off a test set (give a test file)")
    return np.setdiff1d(np.arange(len(schools)), test), test


def _subset(texts: list[str], labels: np.ndarray, schools: np.ndarray, rows: np.ndarray) -> NgssSplit:
    return NgssSplit([texts[i] for i in rows], labels[rows], schools[rows])


def load_csv(
    train: str | Path | bytes,
    test: str | Path | bytes | None = None,
    *,
    task_name: str | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> NgssDataset:
    """Import the lab's CSV files (NGSS.md, "Real data") as an NgssDataset with source "imported".

    Layout: the response text in the first column (or a column named `text`/`response`),
    one column per rubric element `E1`, `E2`, ... holding 0, 1 or -1 (unscored, kept as
    -1), an optional `Group` or `school` column naming each row's school. Without `test`,
    a path named `{slug}_train.csv` takes its sibling `{slug}_test.csv` if there is one;
    otherwise `test_fraction` of each school is split off, seeded. Without a group column
    every row is school 0 ("all") and `has_groups` is false. School indices follow the
    sorted school names. Any problem raises `CsvImportError` and nothing is returned;
    each file is read whole and at most `max_bytes` long.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    slug = None
    if not isinstance(train, (bytes, bytearray)):
        match = _SPLIT_FILE.fullmatch(Path(train).name)
        slug = match.group("slug") if match else Path(train).stem
        sibling = Path(train).with_name(f"{match.group('slug')}_test.csv") if match else None
        if test is None and sibling is not None and sibling.is_file():
            test = sibling
    train_table = _parse_table(*_read_text(train, "train", max_bytes))
    test_table = None
    if test is not None:
        test_table = _matched_test(train_table, _parse_table(*_read_text(test, "test", max_bytes)))
    has_groups = train_table.groups is not None
    tables = [train_table] + ([test_table] if test_table is not None else [])
    school_names = sorted({g for table in tables for g in table.groups}) if has_groups else ["all"]
    index = {school: i for i, school in enumerate(school_names)}

    def schools_of(table: _Table) -> np.ndarray:
        return np.array([index[g] for g in table.groups] if has_groups else [0] * len(table.texts), dtype=np.int64)

    train_schools = schools_of(train_table)
    if test_table is None:
        train_rows, test_rows = _split_off_test(train_schools, test_fraction, seed, train_table.name)
        train_split = _subset(train_table.texts, train_table.labels, train_schools, train_rows)
        test_split = _subset(train_table.texts, train_table.labels, train_schools, test_rows)
    else:
        train_split = NgssSplit(train_table.texts, train_table.labels, train_schools)
        test_split = NgssSplit(test_table.texts, test_table.labels, schools_of(test_table))
    return NgssDataset(
        task=task_name or slug or "imported",
        label_names=train_table.label_names,
        source="imported",
        school_names=school_names,
        train=train_split,
        test=test_split,
        has_groups=has_groups,
    )


def write_csv(dataset: NgssDataset, directory: str | Path) -> tuple[Path, Path]:
    """Write `{task}_train.csv` and `{task}_test.csv` in the lab's layout (text, E*, Group);
    `load_csv` on the train path reads the same dataset back. Returns (train path, test path)."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / f"{dataset.task}_train.csv", directory / f"{dataset.task}_test.csv")
    header = ["text", *dataset.label_names] + (["Group"] if dataset.has_groups else [])
    for path, split in zip(paths, (dataset.train, dataset.test)):
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for text, labels, school in zip(split.texts, split.labels.tolist(), split.schools.tolist()):
                group = [dataset.school_names[school]] if dataset.has_groups else []
                writer.writerow([text, *labels, *group])
    return paths


# ----------------------------------------------------------------------------- metrics


def predictions_from_probabilities(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N, K) int8 0/1 predictions: 1 where the sigmoid probability is >= `threshold`."""
    probabilities = np.asarray(probabilities, dtype=float)
    if np.any((probabilities < 0) | (probabilities > 1)) or np.any(np.isnan(probabilities)):
        raise ValueError("probabilities must lie in [0, 1]")
    return (probabilities >= threshold).astype(np.int8)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0.0 when that is 0/0 (no positives predicted or true), as
    scikit-learn's `zero_division=0`."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _metrics(predictions: np.ndarray, labels: np.ndarray) -> dict:
    scored = labels != -1  # (N, K)
    correct = (predictions == labels) & scored
    scored_per_label = scored.sum(axis=0)
    positive, predicted = (labels == 1) & scored, (predictions == 1) & scored
    tp = (positive & predicted).sum(axis=0)
    fp = (predicted & ~positive).sum(axis=0)
    fn = (positive & ~predicted).sum(axis=0)
    has_data = scored_per_label > 0
    label_accuracy = [float(c / n) if n else None for c, n in zip(correct.sum(axis=0), scored_per_label)]
    label_f1 = [_f1(int(t), int(p), int(n)) if d else None for t, p, n, d in zip(tp, fp, fn, has_data)]
    rows = scored.any(axis=1)  # rows with at least one scored element
    row_correct = np.all(correct | ~scored, axis=1)[rows]
    score_error = np.abs((predictions * scored).sum(axis=1) - (labels * scored).sum(axis=1))[rows]
    scored_accuracies = [a for a in label_accuracy if a is not None]
    scored_f1 = [f for f in label_f1 if f is not None]
    return {
        "per_label_accuracy": float(np.mean(scored_accuracies)) if scored_accuracies else None,
        "label_accuracy": label_accuracy,
        "entry_accuracy": float(correct.sum() / scored.sum()) if scored.any() else None,
        "exact_match": float(row_correct.mean()) if rows.any() else None,
        "score_mae": float(score_error.mean()) if rows.any() else None,
        "micro_f1": _f1(int(tp.sum()), int(fp.sum()), int(fn.sum())) if scored.any() else None,
        "macro_f1": float(np.mean(scored_f1)) if scored_f1 else None,
        "label_f1": label_f1,
        "num_examples": int(len(labels)),
        "num_scored": int(scored.sum()),
    }


def rubric_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict:
    """Rubric metrics of (N, K) 0/1 `predictions` against (N, K) `labels` in {0, 1, -1}.

    Entries labelled -1 (unscored) are left out of every metric. Definitions:
    - `label_accuracy[k]`: fraction of label k's scored entries predicted right (None if it has none);
    - `per_label_accuracy`: mean of `label_accuracy` over labels with scored entries
      (the paper's "accuracy"); `entry_accuracy`: fraction of all scored entries right
      (the two differ when labels have different numbers of scored entries);
    - `exact_match` ("rubric match"): fraction of rows, among rows with a scored entry,
      whose scored entries are all right;
    - `score_mae`: mean absolute difference of the total score (sum of scored elements),
      predicted vs true, over the same rows;
    - `micro_f1`: F1 of all scored entries pooled; `label_f1[k]`: F1 of label k; `macro_f1`:
      their mean over labels with scored entries. F1 is 0.0 where it is 0/0 (no true and no
      predicted positives), as scikit-learn's `zero_division=0`;
    - `num_examples`: rows; `num_scored`: scored entries.
    With `groups` ((N,) school index per row), `per_group` maps each group's name
    (`group_names[g]`, else `str(g)`) to the same metrics on its rows. Plain floats, ints,
    lists and None: JSON-able as is.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 2 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be the same (N, K) shape")
    if not np.isin(predictions, (0, 1)).all():
        raise ValueError("predictions must be 0 or 1 (threshold probabilities first)")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be 0, 1 or -1 (unscored)")
    predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
    result = _metrics(predictions, labels)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(labels),):
            raise ValueError(f"groups must have shape ({len(labels)},), got {groups.shape}")
        result["per_group"] = {
            str(group_names[group] if group_names is not None else group): _metrics(
                predictions[groups == group], labels[groups == group]
            )
            for group in np.unique(groups).tolist()
        }
    return result
