"""The nine NGSS tasks (NGSS.md's table: sizes, rubric elements, published prevalence) and the
dataset types every NGSS module shares. Data and types only; `ngss_data` is the public entry point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
