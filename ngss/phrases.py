"""The synthetic NGSS responses' phrase banks: per task, the clauses that earn each rubric
element, near-misses that use an element's keywords without its reasoning (labelled 0),
wrong claims, fillers and bare non-answers, plus the shared slots, connectors, fillers
and misspellings. Data only; `ngss_data.generate` composes responses from it.

Clauses are written lower-case-first (proper nouns aside) and joined by the generator.
`{slot}` picks a variant: each slot has formal and casual variants, and each school
prefers some of them (and some clauses of each bank), so schools differ in vocabulary.
A positive clause expresses the element's reasoning; a near-miss uses its keywords
without the reasoning and earns 0, so no single word decides a label.
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Bank:
    positive: dict[str, tuple[str, ...]]
    near_miss: dict[str, tuple[str, ...]]
    wrong_claim: tuple[str, ...]
    fillers: tuple[str, ...]
    bare: tuple[str, ...]
    slots: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


COMMON_SLOTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "because": (("because", "since", "as"), ("because", "bc", "cuz", "cause")),
    "think": (
        ("I think", "I believe", "I would say", "I conclude that"), ("i think", "I think", "i guess", "I feel like")
    ),
    "same": (("the same", "identical", "exactly the same"), ("the same", "same", "the exact same")),
    "so": (("so", "therefore", "which means"), ("so", "so basically", "which means")),
    "shows": (("shows", "indicates", "tells us"), ("shows", "means", "proves")),
    "substance": (("substance", "substance", "material"), ("substance", "stuff", "thing")),
    "different": (("different", "not the same"), ("different", "not the same", "totally different")),
    "atoms": (("atoms", "atoms"), ("atoms", "atoms", "particles")),
}

CONNECTORS = (  # (formal, casual), before a further piece of evidence
    ("", "Also, ", "In addition, ", "Another reason is that ", "Furthermore, "),
    ("", "also ", "and ", "plus ", "and also "),
)

GENERIC_NON_ANSWERS = (
    "idk", "i dont know", "I don't know", "not sure", "?", "no idea", "idk sorry", "I forgot", "because", "?? idk",
)

BANKS: dict[str, Bank] = {
    "gas_filled_balloons": Bank(
        positive={
            "E1": (
                "{AD} could be the same {substance}", "{think} {AD} are the same gas",
                "the gases in balloons A and D could be {same} {substance}", "{AD} are probably the same {substance}",
                "the two gases that match are {AD}", "{AD} might be one and the same gas",
                "{AD} are the same kind of gas",
            ),
            "E2": (
                "both {AD} are {flam} and have a density of {dens}",
                "{AD} are both {flam} and both have a density of {dens}",
                "the data {shows} {AD} have the same flammability and the same density",
                "they are both {flam} and their densities are both {dens}",
                "A is {flam} with a density of {dens} and D is also {flam} with {dens}",
                "in the table A and D match, both {flam} and both {dens}",
                "B and C are not {flam} and are heavier, but A and D are {flam} and {dens}",
            ),
            "E3": (
                "flammability and density are characteristic properties of a {substance}",
                "density and flammability are identifying properties, {so} they tell you what the {substance} is",
                "every {substance} has its own density no matter how much of it there is",
                "a {substance} always has the same density and flammability even if the amount changes",
                "density does not depend on the amount, {so} it can be used to identify a {substance}",
                "characteristic properties like density stay the same for a {substance} but volume does not",
                "you can identify a {substance} by properties like its density and whether it burns",
            ),
        },
        near_miss={
            "E1": ("gas A and gas D are in the table", "I could not tell which gases are the same",
                   "{AD} are in {different} balloons"),
            "E2": ("gas A is {flam}", "I looked at the flammability and density columns",
                   "B has a density of 1.422 g/L and C has 1.981 g/L", "the balloons have {different} volumes",
                   "some of the gases are {flam} and some are not", "density is measured in g/L"),
            "E3": ("density is a property", "{flam} means it can catch on fire", "density is mass divided by volume",
                   "volume is how much space the gas takes up", "properties are things you can observe about a gas"),
        },
        wrong_claim=(
            "B and C could be the same {substance}", "{think} B and C are the same gas",
            "none of the gases are the same {substance}", "all of the gases are {different}",
            "A and B are the same gas", "C and D could be the same",
            "they are all the same {substance} {because} they are all gases",
            "A and C are the same", "{AD} are {different} gases",
        ),
        fillers=(
            "the table shows four balloons filled with gases", "I used the data in the table",
            "each balloon has a gas in it", "the balloons are all about the same size",
            "I compared all four balloons", "that is my answer", "this was a hard question",
            "the balloons were filled in a lab", "I read the chart carefully", "the question asks which gases match",
            "I looked at each gas one by one", "the balloons are tied with string", "the data table has three columns",
        ),
        bare=("A and D", "a and d", "A, D", "A and D.", "A & D"),
        slots={
            "AD": (
                ("A and D", "gas A and gas D", "balloons A and D", "A and D"), ("a and d", "A and D", "A+D", "A & D")
            ),
            "flam": (
                ("flammable", "flammable", "able to burn"), ("flammable", "flamable", "burnable", "able to catch fire")
            ),
            "dens": (("0.089 g/L", "0.089", "0.089 grams per liter"), ("0.089", "0.089 g/L", ".089")),
        },
    ),
    "anna_vs_carla": Bank(
        positive={
            "E1": (
                "Anna is right", "I agree with Anna", "Anna is correct, the two samples are {same} {substance}",
                "{think} Anna is right that the samples are the same {substance}", "Carla is wrong and Anna is right",
                "the samples are the same {substance}, like Anna said", "Anna has the right idea",
            ),
            "E2": (
                "both samples have a density of {dens}", "the density of sample 1 and sample 2 is the same, {dens}",
                "both samples melt at {mp}", "the melting point is {mp} for both samples",
                "the data {shows} the samples have {same} density and {same} melting point",
                "sample 1 and sample 2 both have a density of {dens} and a melting point of {mp}",
            ),
            "E4": (
                "density and melting point are characteristic properties",
                "characteristic properties like density and melting point identify a {substance}",
                "density and melting point stay the same for a {substance} no matter how much you have",
                "a {substance} always has the same density and melting point",
                "you can tell what a {substance} is by its density and its melting point",
                "density and melting point are what make a {substance} what it is",
            ),
            "E5": (
                "mass, volume and shape do not matter {because} they change with the size of the sample",
                "the mass and volume are {different} only {because} one sample is bigger",
                "shape and mass are not characteristic properties, {so} they cannot tell you the {substance}",
                "Carla only looked at the mass and shape, which depend on how much you have",
                "you can cut a sample into a new shape and it is still the same {substance}",
                "the size of a sample does not change what {substance} it is",
            ),
        },
        near_miss={
            "E1": ("Anna and Carla both looked at the samples", "Anna and Carla disagree about the samples"),
            "E2": ("sample 1 has a mass of 54 g and sample 2 has a mass of 27 g",
                   "I looked at the density in the table",
                   "the table lists mass, volume, density and melting point", "the melting point is really high"),
            "E4": ("density is mass divided by volume", "properties are things you can measure",
                   "melting point is the temperature where something melts", "density is a property"),
            "E5": ("the samples have {different} masses and volumes", "sample 1 is bigger than sample 2",
                   "sample 1 is a cube and sample 2 is a cylinder", "the shapes of the samples are {different}",
                   "mass is how much matter is in something"),
        },
        wrong_claim=(
            "Carla is right", "I agree with Carla", "{think} Carla is correct, the samples are {different} substances",
            "they are both right", "the samples are {different} substances {so} Anna is wrong",
            "neither of them is right", "Carla is correct {because} the samples look {different}",
        ),
        fillers=(
            "Anna and Carla are looking at two samples of a solid", "the question asks who is right about the samples",
            "I looked at the data table to decide", "scientists compare samples by looking at data",
            "this is what I think and why", "the table has a lot of information about both samples",
            "I read what Anna and Carla said", "both samples are gray and shiny",
            "they found the samples in the science lab", "I went through each row of the table",
            "it took me a while to figure this out", "this is like what we did in class",
            "they were arguing about it for a while", "that is my answer to the question", "I hope this is right",
            "I had to think about this one", "my partner agreed with me",
            "the samples were given to them by their teacher", "Anna thinks one thing and Carla thinks another",
            "they both made a claim about the samples", "I compared the numbers for each sample",
            "both samples are solids at room temperature", "the question wants us to use the data",
            "I read the whole table before answering", "they measured everything in the lab",
            "I had to look back at the table a few times", "they each had a reason for what they said",
        ),
        bare=("anna", "Anna", "carla", "both", "Anna.", "anna i think"),
        slots={
            "dens": (("2.7 g/cm3", "2.7 g/cm³", "2.7"), ("2.7", "2.7 g/cm3", "2.7 g")),
            "mp": (("660 °C", "660 degrees Celsius", "660 degrees"), ("660", "660 degrees", "660 C")),
        },
    ),
    "breaking_down_hydrogen_peroxide": Bank(
        positive={
            "E1": (
                "{h2o2} breaks down into new substances, water and oxygen",
                "new substances are made, water and oxygen gas",
                "a chemical reaction happened {so} there are new substances",
                "{h2o2} turns into {different} substances",
                "the products are water and oxygen, which are new substances",
                "{h2o2} is not there anymore, it became water and oxygen",
            ),
            "E2": (
                "bubbles formed, which {shows} a gas was made", "the glowing splint relit, {so} the gas is oxygen",
                "the fizzing and bubbles are evidence of a new gas",
                "the properties changed, the liquid fizzed and gave off a gas",
                "there were bubbles even though nothing was heated",
                "the new liquid and the gas have {different} properties than {h2o2}",
            ),
            "E3": (
                "the {atoms} in {h2o2} rearrange to make water and oxygen molecules",
                "the bonds between the {atoms} break and the {atoms} join in new ways",
                "the hydrogen and oxygen {atoms} regroup into H2O and O2",
                "the molecules break apart and the {atoms} form new molecules",
                "2 H2O2 molecules turn into 2 H2O and one O2 as the {atoms} rearrange",
            ),
            "E4": (
                "no {atoms} are created or destroyed", "the number of each kind of atom is the same before and after",
                "there are 4 hydrogen atoms and 4 oxygen atoms before and after",
                "mass is conserved {because} the {atoms} do not disappear",
                "the {atoms} are all still there, none of them are lost",
            ),
        },
        near_miss={
            "E1": ("{h2o2} is a chemical", "{h2o2} is used to clean cuts", "water and oxygen are everywhere"),
            "E2": ("the bottle of {h2o2} is brown", "bubbles are made of air", "the yeast was added to the flask",
                   "the liquid looked clear before and after"),
            "E3": ("{h2o2} is made of hydrogen and oxygen {atoms}", "molecules are made of {atoms}",
                   "{atoms} are really small", "H2O2 has two hydrogens and two oxygens"),
            "E4": ("matter is everything around us", "the flask got lighter",
                   "there are a lot of {atoms} in the flask"),
        },
        wrong_claim=(
            "no new {substance} is made, it is still {h2o2}", "it just changes from a liquid to a gas",
            "{h2o2} just evaporates", "it is only a physical change",
            "the yeast makes the bubbles and the {h2o2} stays the same",
        ),
        fillers=(
            "we did this experiment in class with yeast", "the flask was on the lab table",
            "I watched the video of the experiment", "the question asks if {h2o2} breaks down",
            "{h2o2} is a clear liquid", "this is my explanation", "it was really cool to watch",
            "my teacher did this as a demo", "I used the model to help me", "you need goggles for this lab",
            "the yeast makes it happen faster", "we poured it into a flask", "the splint was glowing at first",
            "it happened really fast", "I wrote down what I saw", "our group did this together",
        ),
        bare=("yes", "it breaks down", "water", "oxygen", "bubbles"),
        slots={
            "h2o2": (
                ("hydrogen peroxide", "H2O2", "the hydrogen peroxide"), ("hydrogen peroxide", "h2o2", "the peroxide")
            )
        },
    ),
    "carlos_javier_atomic_model": Bank(
        positive={
            "E1": (
                "Carlos's model is right", "Carlos has the better model", "I agree with Carlos's model",
                "{think} Carlos's model shows water correctly", "Carlos is right and Javier is not",
            ),
            "E2": (
                "each water molecule has two hydrogen {atoms} and one oxygen atom",
                "water is made of 2 hydrogen {atoms} and 1 oxygen atom",
                "the model needs two H atoms for every O atom",
                "Carlos used the right atoms, two hydrogen and one oxygen",
                "H2O means two hydrogens and one oxygen",
            ),
            "E3": (
                "the {atoms} are bonded together in molecules",
                "in water the hydrogen and oxygen {atoms} are joined, not separate",
                "the {atoms} need to be connected to make a water molecule",
                "Javier's atoms are floating apart but they should be bonded",
                "the hydrogen atoms are attached to the oxygen atom",
            ),
            "E4": (
                "the model is not to scale, real {atoms} are much too small to see",
                "{atoms} are not really colored like in the model", "the drawing is way bigger than real {atoms}",
                "a model can't show everything, like how the {atoms} move",
                "real molecules are much smaller than the circles in the drawing",
            ),
            "E5": (
                "the way the {atoms} are put together makes it water",
                "if the {atoms} were arranged another way it would be a {different} {substance}",
                "separate hydrogen and oxygen {atoms} are not water, they would be {different} substances",
                "the structure of the molecule is what gives water its properties",
                "water is water {because} of how its {atoms} are connected",
            ),
        },
        near_miss={
            "E1": ("Carlos and Javier both drew water", "Javier drew a lot of circles"),
            "E2": ("water is wet and clear", "the models use circles for {atoms}", "there are {atoms} in both models",
                   "hydrogen is a gas"),
            "E3": ("the {atoms} are all in the box", "Javier's model has more space",
                   "the molecules are moving around"),
            "E4": ("the model is a drawing", "models help us learn", "Carlos used blue and red circles"),
            "E5": ("water is a {substance}", "water is a liquid at room temperature",
                   "oxygen and hydrogen are elements"),
        },
        wrong_claim=(
            "Javier's model is right", "Javier has the better model", "both models are correct",
            "neither model is right", "{think} Javier drew water better",
        ),
        fillers=(
            "Carlos and Javier both drew models of water", "the question asks whose model is better",
            "I looked closely at both drawings", "the models are drawn in boxes", "we learned about models in class",
            "this is my reasoning", "they both tried hard on their models", "models are used a lot in science",
            "I compared the two pictures", "Carlos drew his model first", "Javier's drawing is bigger",
            "their teacher asked them to draw water", "the models have a key for each atom",
            "I compared each part of the models", "they had to share their models with the class",
        ),
        bare=("Carlos", "carlos", "Javier", "the first one", "both"),
        slots={},
    ),
    "dry_ice_model": Bank(
        positive={
            "E1": (
                "it is still {co2}, just as a gas", "the molecules stay {co2} molecules, they do not change",
                "the dry ice does not become a new {substance}, it is {co2} before and after",
                "the {co2} molecules are the same in the solid and the gas",
                "no new molecules are made, only the state changes",
            ),
            "E2": (
                "the molecules gain thermal energy and move faster",
                "as it warms up the {particles} spread out and move around more",
                "heat from the room makes the {co2} molecules vibrate faster until they break away",
                "the {particles} get more energy {so} they move farther apart",
                "in the gas the molecules are far apart and moving fast",
            ),
            "E4": (
                "the dry ice goes straight from a solid to a gas", "this is sublimation, solid to gas without a liquid",
                "it changes state from solid to gas", "the solid {co2} sublimates into a gas",
                "it skips the liquid phase and becomes a gas",
            ),
        },
        near_miss={
            "E1": ("dry ice is very cold", "dry ice keeps things cold", "{co2} is what we breathe out"),
            "E2": ("the molecules get bigger when it warms up", "the {particles} are cold", "the molecules melt",
                   "the room is warm"),
            "E4": ("dry ice is a solid", "there are three states of matter", "the fog looks really cool"),
        },
        wrong_claim=(
            "the dry ice turns into water", "the dry ice melts into a liquid", "it turns into smoke",
            "the dry ice just disappears", "the molecules turn into air", "the dry ice becomes oxygen",
        ),
        fillers=(
            "we saw dry ice in class", "the dry ice was on a plate",
            "my model shows the dry ice at the start and the end",
            "you should not touch dry ice with bare hands", "I drew circles for the molecules in my model",
            "this happens at room temperature", "the question asks what happens to the dry ice",
            "this is my model", "it got smaller and smaller", "the fog was coming off the dry ice",
            "dry ice is used at concerts", "I watched it for a few minutes", "my model has two boxes",
            "we were not allowed to touch it", "it looked like it was smoking",
        ),
        bare=("it melts", "it gets smaller", "idk it evaporates", "gas", "smoke"),
        slots={
            "co2": (("carbon dioxide", "CO2", "carbon dioxide (CO2)"), ("co2", "CO2", "carbon dioxide")),
            "particles": (("particles", "molecules"), ("particles", "molecules", "partcles")),
        },
    ),
    "layers_in_test_tube": Bank(
        positive={
            "E1": (
                "a chemical reaction occurred", "yes, a chemical reaction happened in the test tube",
                "{think} there was a chemical reaction", "the two substances reacted with each other",
                "this is a chemical change, not just mixing",
            ),
            "E2": (
                "the densities were 0.79 and 1.05 before and 0.90 and 1.00 after", "the density changed after heating",
                "the densities of the layers are {different} from the densities at the start",
                "before and after the density is not {same}",
            ),
            "E3": (
                "the melting points changed from -114 and 17 to -84 and 0",
                "the melting points after are {different} from before",
                "the melting point changed after the substances were heated",
                "none of the melting points at the end match the ones at the start",
            ),
            "E4": (
                "both starting liquids dissolve in water but the top layer does not",
                "the solubility changed, one layer does not dissolve in water anymore",
                "after heating the solubility in water is {different}",
                "before both were soluble, after the top layer is insoluble",
            ),
            "E5": (
                "the smell changed from vinegar to fruity",
                "the top layer smells fruity and the starting substances did not",
                "the odor is {different} after heating", "it smelled {different} at the end than at the start",
            ),
            "E6": (
                "the top layer has properties that neither starting {substance} had",
                "the top layer does not match substance 1 or substance 2",
                "the properties of the top layer are {different} from both starting liquids",
            ),
            "E7": (
                "the bottom layer is not the same as either starting {substance}",
                "the bottom layer's properties don't match substance 1 or 2",
                "the bottom layer has {different} properties than what we started with",
            ),
            "E8": (
                "neither layer has the same properties as the substances we started with",
                "none of the layers match the starting substances",
                "both layers have new properties compared to the start",
            ),
            "E9": (
                "{different} properties mean a {different} {substance}",
                "since the properties changed, new substances were made",
                "each {substance} has its own properties, {so} new properties means a new {substance}",
                "the properties changed which {shows} new substances formed",
            ),
            "E10": (
                "the {atoms} of the two substances rearranged into new molecules",
                "the molecules broke apart and the {atoms} made new molecules",
                "the {atoms} regrouped to make {different} molecules",
            ),
        },
        near_miss={
            "E1": ("the substances were mixed and heated", "something happened in the test tube"),
            "E2": ("density is mass divided by volume", "the heavier layer sank to the bottom"),
            "E3": ("heating makes things melt", "the test tube was heated to 80 degrees",
                   "melting point is when a solid becomes a liquid"),
            "E4": ("some things dissolve in water", "sugar dissolves in water"),
            "E5": ("both liquids are clear", "you should waft to smell chemicals"),
            "E6": ("there are two layers in the test tube", "the top layer floats on the bottom layer"),
            "E7": ("the bottom layer is bigger", "the bottom layer is at the bottom"),
            "E8": ("the layers look like oil and water",),
            "E9": ("properties are things like density and smell", "every {substance} has properties"),
            "E10": ("everything is made of {atoms}", "the molecules moved faster when heated"),
        },
        wrong_claim=(
            "no chemical reaction happened, they just separated", "it is just a mixture like oil and water",
            "no reaction, the layers are the same substances as before",
            "it was a physical change {because} it was heated",
        ),
        fillers=(
            "the test tube was heated for five minutes", "we mixed the two liquids first",
            "the question asks if a chemical reaction occurred", "I used the data table",
            "the test tube was left to cool", "this is my explanation", "I looked at each property in the table",
            "the experiment was done in a fume hood", "the tube was in a water bath", "we waited for it to cool down",
            "it took about ten minutes", "I wrote down what I saw", "our group did the experiment together",
            "the test tube had a stopper", "we used a hot plate",
        ),
        bare=("yes", "yes it did", "no", "yes chemical", "layers"),
        slots={},
    ),
    "model_for_making_water": Bank(
        positive={
            "E1": (
                "hydrogen is H2, two hydrogen {atoms} bonded together", "the reactants are H2 and O2 molecules",
                "oxygen gas is made of pairs of oxygen {atoms}, O2",
                "at the start there are hydrogen molecules with 2 H atoms and oxygen molecules with 2 O atoms",
                "I drew the hydrogen and oxygen as molecules of two {atoms} each",
            ),
            "E2": (
                "each water molecule is one oxygen atom bonded to two hydrogen {atoms}",
                "the product is H2O, with 2 hydrogens and 1 oxygen",
                "water molecules have an O in the middle with two H's attached",
                "at the end there are water molecules made of 2 H and 1 O",
            ),
            "E3": (
                "the {atoms} rearrange to form new molecules",
                "the bonds in H2 and O2 break and the {atoms} join up in a new way",
                "the hydrogen and oxygen {atoms} regroup into water molecules",
                "the molecules break apart and the {atoms} make water",
            ),
            "E4": (
                "no {atoms} are lost or created", "there are the same number of {atoms} before and after",
                "4 hydrogen atoms and 2 oxygen atoms at the start and at the end",
                "the number of {atoms} is conserved",
            ),
            "E5": (
                "water has {different} properties than hydrogen and oxygen",
                "hydrogen and oxygen are gases that burn but water is a liquid that puts out fire",
                "water is a new {substance} with its own properties",
                "the product has {different} properties from the reactants",
            ),
        },
        near_miss={
            "E1": ("hydrogen and oxygen are gases", "hydrogen and oxygen make water", "the reactants are on the left"),
            "E2": ("water is a liquid", "the product is on the right side", "we need water to live"),
            "E3": ("the molecules bump into each other", "{atoms} are tiny particles", "the gases mix together"),
            "E4": ("there are a lot of {atoms}", "matter takes up space", "the equation has numbers in it"),
            "E5": ("water is wet", "we drink water every day", "oxygen is in the air"),
        },
        wrong_claim=(
            "hydrogen and oxygen are single {atoms} floating around", "at the start there is just one big molecule",
            "the reactants are H and O atoms by themselves",
        ),
        fillers=(
            "the question asks us to model making water", "I drew circles for the atoms",
            "my model has a before and after picture", "the reaction needs a spark to start",
            "this is what happens", "we learned about this in science", "the teacher showed us a video",
            "this is my model", "I labeled the atoms in my model",
            "the reaction happens really fast", "hydrogen is the smallest atom", "my model uses a key",
            "I used a different color for each kind of atom", "this reaction is used in rockets",
        ),
        bare=("H2O", "water", "2H2 + O2", "hydrogen and oxygen"),
        slots={},
    ),
    "namis_careful_experiment": Bank(
        positive={
            "E1": (
                "Nami made a new {substance}", "a new {substance} formed", "yes, a chemical reaction happened",
                "{think} there is a new {substance}", "the white solid is a new {substance}",
            ),
            "E2": (
                "the density changed from 1.0 to 2.2 g/cm3",
                "the density of the solid is {different} from the density of the liquids",
                "before mixing the density was 1.0 and after it was 2.2", "the density is not {same} before and after",
            ),
            "E3": (
                "the liquids were clear but now there is a white solid", "the color changed from clear to white",
                "the melting point after mixing is {different} from before",
                "the solid melts at 801 degrees but the liquids melted below 0",
            ),
            "E4": (
                "the new {substance} has {different} characteristic properties like density and melting point",
                "characteristic properties changed, {so} it is a {different} {substance}",
                "a new {substance} has its own characteristic properties",
            ),
            "E5": (
                "the {atoms} in the liquids rearranged to form new molecules",
                "the molecules broke apart and the {atoms} joined in a new way",
                "{atoms} from both liquids regrouped into the solid",
            ),
            "E7": (
                "she kept the temperature the same {so} the change was not from heat",
                "the mass stayed the same but mass is not a characteristic property",
                "she used the same amounts and temperature {so} it was a fair test",
                "volume and mass don't tell you if there is a new {substance}",
                "she controlled the conditions so only the mixing changed",
            ),
        },
        near_miss={
            "E1": ("Nami mixed two liquids", "something happened when she mixed them"),
            "E2": ("density is mass over volume", "she measured the density"),
            "E3": ("the beaker was clear glass", "white is a color", "she mixed them in a beaker"),
            "E4": ("properties are what you measure", "characteristic means special"),
            "E5": ("everything is made of {atoms}", "the molecules mixed together"),
            "E7": ("Nami was very careful", "she wore goggles", "she measured the mass",
                   "she wrote everything in a table"),
        },
        wrong_claim=(
            "no new {substance}, she just mixed them", "it is a mixture, not a new {substance}",
            "the solid was already in the liquids",
        ),
        fillers=(
            "Nami did an experiment with two liquids", "the question asks if Nami made a new substance",
            "I looked at Nami's data table", "this is my explanation", "Nami recorded everything",
            "it was a careful experiment", "the data is in the table", "I read the table twice",
            "Nami mixed the liquids slowly", "she used a beaker and a stirring rod", "I read her notes",
            "she took a picture of the beaker", "Nami wanted to know what would happen",
        ),
        bare=("yes", "new substance", "yes she did", "no"),
        slots={},
    ),
    "natural_sugar": Bank(
        positive={
            "E1": (
                "natural sugar and lab-made sugar are the same {substance}", "they are the same {substance}",
                "{think} the two sugars are {same}", "the lab sugar is the same as natural sugar",
                "yes, they are the same {substance}",
            ),
            "E2": (
                "both sugars melt at 186 °C", "the melting point of both is {same}, 186 degrees",
                "they have the same melting point", "the data {shows} both have a melting point of 186",
            ),
            "E3": (
                "both have a density of 1.59 g/cm3", "they both dissolve in water and have the same density",
                "the density is 1.59 for both sugars", "their densities and solubility match",
            ),
            "E4": (
                "melting point and density are characteristic properties",
                "characteristic properties like melting point tell you what a {substance} is",
                "you identify a {substance} by its density and melting point",
                "every {substance} has its own melting point and density",
            ),
            "E5": (
                "where the sugar comes from does not change what {substance} it is",
                "the mass is {different} but mass depends on how much you have",
                "the amount of sugar does not matter, only its properties",
                "being made in a lab does not change the {substance}",
            ),
        },
        near_miss={
            "E1": ("both are called sugar", "the company makes sugar"),
            "E2": ("I looked at the melting point", "melting point is when a solid turns to liquid"),
            "E3": ("both sugars are white", "density is mass divided by volume", "sugar dissolves in tea"),
            "E4": ("properties are things you can measure", "sugar tastes sweet"),
            "E5": ("the masses are {different}", "one sugar is from a plant and one is from a lab",
                   "the lab sugar has a mass of 25 g"),
        },
        wrong_claim=(
            "they are {different} substances {because} one is made in a lab",
            "natural sugar is healthier {so} it is {different}", "lab-made sugar is fake sugar",
            "they are not the same {because} they came from {different} places",
        ),
        fillers=(
            "the question asks if the two sugars are the same substance", "I looked at the table",
            "sugar is in a lot of foods", "the company makes sugar in a lab", "I like sugar", "this is my answer",
            "the table compares two sugars", "sugar comes from sugar cane or sugar beets",
            "the lab uses machines to make sugar", "both sugars are sold in stores", "the table has five rows",
            "I compared the numbers in each row", "people use sugar when they bake",
        ),
        bare=("sugar", "yes", "idk same?", "no"),
        slots={},
    ),
}

# Said in any task's response: padding that carries no rubric element.
COMMON_FILLERS = (
    "I think this makes sense", "I am pretty sure about my answer", "we talked about this in class",
    "it was hard to decide at first", "I checked my answer again", "my teacher said to use evidence",
    "I tried to explain my thinking", "that is why I chose my answer", "I wrote this as clearly as I could",
    "this is what I learned in this unit",
)

MISSPELLINGS = {
    "because": ("becuase", "becase", "becouse"), "density": ("desity", "densitiy", "densty"),
    "substance": ("substence", "subtance", "substants"), "substances": ("substences", "subtances"),
    "flammable": ("flamable", "flammible"), "molecules": ("molecuels", "molicules", "mollecules"),
    "different": ("diffrent", "differnt"), "properties": ("propertys", "properites"), "property": ("propety",),
    "chemical": ("chemcal", "chemicle"), "reaction": ("reation", "reacton"), "characteristic": ("charactaristic",),
    "atoms": ("atomes", "adams"), "oxygen": ("oxigen", "oxegen"), "hydrogen": ("hydrogin", "hydrogan"),
    "believe": ("belive",), "particles": ("particals", "partical"), "temperature": ("temprature",),
    "experiment": ("experament",), "evidence": ("evidance",), "solubility": ("solubilty", "soluability"),
    "dissolve": ("disolve",), "sublimation": ("sublimaton",), "bubbles": ("bubles",), "melting": ("melteing",),
    "their": ("there",), "same": ("sane", "sam"),
}

# Paper answers, transcribed, drop these (fragments: "A and D same, both flammable").
FRAGMENT_DROPS = frozenset({"the", "is", "are", "a", "an", "that", "it", "they", "there", "of", "have", "has"})
