"""The mini world: procedural 32-px scenes of coloured, patterned shapes, with captions.

Everything is a pure function of a seed: a scene is drawn from ``numpy.random.Generator``,
rendered at 4x and box-downsampled (anti-aliased edges), and described by a caption whose
wording, synonyms and clause order are drawn from the same generator. Scenes carry their
ground truth (``labels``) for the attribute read-out.

Held out of pretraining, by construction:
* one (class, colour, background) triple in eight: the base-model gate prompts them;
* the subjects' (colour, pattern, mark colour) combinations: a subject is new to the generator, yet made of
  what it can draw (stripes and dots of every colour, bound to their words in some captions), so a learned
  token can make it draw the subject.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

SIZE = 32        # image side in pixels
SUPERSAMPLE = 4  # rendered at SIZE * SUPERSAMPLE, then box-averaged

CLASSES = ("circle", "square", "triangle", "diamond", "star", "cross")
CLASS_WORDS = {"circle": ("circle", "disc"), "cross": ("cross", "plus")}
COLOURS = {
    "red": (215, 45, 45), "orange": (240, 140, 30), "yellow": (235, 215, 45), "green": (45, 160, 70),
    "blue": (45, 85, 215), "purple": (135, 65, 185), "white": (240, 240, 240), "black": (25, 25, 25),
}
BACKGROUNDS = {**COLOURS, "gray": (128, 128, 128)}
PATTERNS = ("plain", "striped", "dotted")
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITIONS = ("center", "left", "right", "top", "bottom")
POSITION_PHRASES = {
    "center": ("in the center", "in the middle"), "left": ("at the left", "on the left"),
    "right": ("at the right", "on the right"), "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
}
CENTRES = {"center": (16.0, 16.0), "left": (9.0, 16.0), "right": (23.0, 16.0), "top": (16.0, 9.0),
           "bottom": (16.0, 23.0)}
RADII = {"small": (5.0, 6.0), "large": (8.0, 9.5)}
# Marks (pixels at SIZE), centred on the shape, over a quarter to a third of it, so that its own colour stays
# the one it is seen to have (half-and-half stripes left "blue with green stripes" as green as blue): 2.5-px
# stripes every 7 px; 3.8-px dots on a 7-px lattice whose every other row is shifted by half a period (dots in
# rows read as dashed stripes). The second build's finer marks (5-px period) sat at the latents' resolution,
# and its denoiser drew stripes as dots and back.
STRIPE_PERIOD, STRIPE_DUTY = 7.0, 0.35
DOT_PERIOD, DOT_RADIUS = 7.0, 0.27  # radius in periods
RENDERER = 3  # version of what render() draws; a build records it and refuses a work folder of another
BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "with a {} background")
OWN_PREFIXES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a {}", "a drawing of a {}")
COUNTS = (1, 2)
# The read-out's heads and their classes, in a fixed order.
HEADS = {"class": CLASSES, "colour": tuple(COLOURS), "pattern": PATTERNS, "background": tuple(BACKGROUNDS),
         "position": POSITIONS, "size": SIZES, "count": COUNTS}
PRETRAIN_SECOND = ("white", "black")  # the first world's only mark colours (``mark_colours="white_black"``)
MARK_COLOURS = ("any", "white_black")  # pretraining's stripe and dot colours: every colour, or the first world's


def renderer_of(world_dir) -> int:
    """The renderer a shipped world's scenes were drawn with (its ``build.json``): the first world records
    none (1), nor did the second build (2, the first with ``vae_factor``)."""
    config = json.loads((Path(world_dir) / "build.json").read_text())
    return config.get("renderer", 2 if "vae_factor" in config["config"] else 1)


GUIDANCE_SCALE = 4.0  # classifier-free guidance of every mini world's sampling
# The sampling protocol of the worlds that recorded none (the first two builds).
FIRST_SAMPLING = {"sampler": "ddim", "steps": 25, "guidance_scale": GUIDANCE_SCALE}


def sampling_of(world_dir) -> dict:
    """The sampler, steps and guidance a shipped world's gates and configurations sample with (its
    ``build.json``; worlds that record none sample as the first)."""
    config = json.loads((Path(world_dir) / "build.json").read_text())
    return config.get("sampling", FIRST_SAMPLING)


def training_templates() -> list[str]:
    data = json.loads(resources.files("dti.resources").joinpath("training_templates.json").read_text())
    return data["object"]


@dataclass
class Shape:
    cls: str
    colour: str
    pattern: str = "plain"
    second: str = "white"      # colour of the stripes or dots
    size: str = "large"
    radius: float = 8.5        # pixels at SIZE
    centre: tuple[float, float] = (16.0, 16.0)
    angle: float = 0.0         # radians


@dataclass
class Scene:
    background: str
    shapes: list[Shape]
    position: str = "center"   # of the first shape; meaningless for two shapes
    labels: dict = field(default_factory=dict)


def held_out_triples(seed: int = 0) -> set[tuple[str, str, str]]:
    """One (class, colour, background) triple in eight, never rendered in pretraining."""
    triples = [t for t in itertools.product(CLASSES, COLOURS, BACKGROUNDS) if t[1] != t[2]]
    rng = np.random.default_rng(seed + 7919)
    pick = rng.permutation(len(triples))[: len(triples) // 8]
    return {triples[i] for i in sorted(pick)}


def pretrain_second(colour: str) -> str:
    return "black" if colour in ("white", "yellow", "orange") else "white"


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
_N = SIZE * SUPERSAMPLE
_YY, _XX = (np.mgrid[0:_N, 0:_N].astype(np.float32) + 0.5) / SUPERSAMPLE


def _shape_mask(cls: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if cls == "circle":
        return u * u + v * v <= 1.0
    if cls == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if cls == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if cls == "triangle":  # apex up (v grows downwards)
        return (v <= 0.7) & (v >= -1.0 + 1.7 * np.abs(u) / 0.95)
    if cls == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if cls == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)
        return r <= 0.5 + 0.5 * (0.5 + 0.5 * np.cos(5 * theta)) ** 1.5
    raise ValueError(f"unknown class {cls!r}")


def render(scene: Scene) -> np.ndarray:
    """[SIZE, SIZE, 3] uint8 image of the scene."""
    img = np.empty((_N, _N, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for s in scene.shapes:
        dx, dy = _XX - s.centre[0], _YY - s.centre[1]
        c, si = np.cos(s.angle), np.sin(s.angle)
        u, v = (c * dx + si * dy), (-si * dx + c * dy)  # pixels, in the shape's frame
        mask = _shape_mask(s.cls, u / s.radius, v / s.radius)
        img[mask] = COLOURS[s.colour]
        if s.pattern == "striped":
            marks = mask & ((u / STRIPE_PERIOD + STRIPE_DUTY / 2) % 1.0 < STRIPE_DUTY)
        elif s.pattern == "dotted":
            row = np.floor(v / DOT_PERIOD + 0.5)
            du = (u / DOT_PERIOD + 0.5 + 0.5 * (row % 2)) % 1.0 - 0.5
            dv = (v / DOT_PERIOD + 0.5) % 1.0 - 0.5
            marks = mask & (du * du + dv * dv <= DOT_RADIUS ** 2)
        else:
            marks = None
        if marks is not None:
            img[marks] = COLOURS[s.second]
    img = img.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Scenes and captions
# --------------------------------------------------------------------------- #
def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def random_shape(rng, cls=None, colour=None, pattern=None, size=None, position=None, second=None) -> Shape:
    cls = cls or _pick(rng, CLASSES)
    colour = colour or _pick(rng, tuple(COLOURS))
    pattern = pattern or _pick(rng, PATTERNS)
    size = size or _pick(rng, SIZES)
    position = position or "center"
    cx, cy = CENTRES[position]
    jitter = rng.uniform(-1.5, 1.5, size=2)
    lo, hi = RADII[size]
    return Shape(cls=cls, colour=colour, pattern=pattern, second=second or pretrain_second(colour), size=size,
                 radius=float(rng.uniform(lo, hi)), centre=(cx + jitter[0], cy + jitter[1]),
                 angle=float(rng.uniform(-0.35, 0.35)) if cls != "circle" else float(rng.uniform(0, 6.3)))


def _shape_words(rng, s: Shape, say_size: bool, say_colour: bool = True) -> str:
    words = []
    if say_size:
        words.append(_pick(rng, SIZE_WORDS[s.size]))
    if say_colour:
        words.append(s.colour)
    after = ""
    if s.pattern != "plain" and rng.random() < 0.9:
        noun = "stripes" if s.pattern == "striped" else "dots"
        style = rng.random()
        if style < 0.45:
            words.append(s.pattern)
        elif style < 0.75:
            after = f" with {noun}"
        else:
            after = f" with {s.second} {noun}"
    elif s.pattern == "plain" and rng.random() < 0.2:
        words.append("plain")
    words.append(_pick(rng, CLASS_WORDS.get(s.cls, (s.cls,))))
    return " ".join(words) + after


def _prefixed(rng, s: Shape) -> str:
    """The first shape's phrase inside a training template (size-consistent) or a plain prefix."""
    if rng.random() < 0.5:
        template = _pick(rng, training_templates())
        says = [w for w in ("small", "large") if f" {w} " in f" {template} "]
        if not says or says[0] == s.size:
            return template.format(_shape_words(rng, s, say_size=not says and rng.random() < 0.5))
    return _pick(rng, OWN_PREFIXES).format(_shape_words(rng, s, say_size=rng.random() < 0.6))


def _clauses(rng, scene: Scene, p_background: float, p_position: float) -> str:
    parts = []
    if rng.random() < p_background:
        parts.append(_pick(rng, BACKGROUND_PHRASES).format(scene.background))
    if len(scene.shapes) == 1 and rng.random() < p_position:
        parts.append(_pick(rng, POSITION_PHRASES[scene.position]))
    if len(parts) == 2 and rng.random() < 0.5:
        parts.reverse()
    return "".join(" " + p for p in parts)


def _labels(scene: Scene) -> dict:
    first = scene.shapes[0]
    if len(scene.shapes) == 1:
        return {"class": first.cls, "colour": first.colour, "pattern": first.pattern, "background": scene.background,
                "position": scene.position, "size": first.size, "count": 1}
    return {"background": scene.background, "count": 2}


@functools.cache
def subject_marks() -> frozenset[tuple[str, str, str]]:
    """The subjects' (colour, pattern, mark colour): never rendered in pretraining (built once: every
    pretraining shape with marks asks)."""
    return frozenset((s.colour, s.pattern, s.second) for s in SUBJECTS)


def pretraining_marks(rng, shape: Shape):
    """A stripe or dot colour for a pretraining shape (``mark_colours="any"``): any colour but its own,
    never a subject's combination."""
    if shape.pattern != "plain":
        held = subject_marks()
        shape.second = _pick(rng, tuple(c for c in COLOURS if c != shape.colour
                                        and (shape.colour, shape.pattern, c) not in held))


def random_scene(rng, held_out: set, judge: bool = False, mark_colours: str = "any") -> Scene:
    """A pretraining scene; never a held-out triple, never a subject's (colour, pattern, mark colour); its
    marks of any colour (``mark_colours="any"``) or white and black only (``"white_black"``, the first world).
    With ``judge``, a scene for the evaluators instead: any mark colour (but the shape's own) and every
    triple, since a judge must read the subjects and prompts the generator was never shown."""
    if mark_colours not in MARK_COLOURS:
        raise ValueError(f"mark_colours must be one of {', '.join(MARK_COLOURS)}, not {mark_colours!r}")
    kind = rng.random()
    while True:
        background = _pick(rng, tuple(BACKGROUNDS))
        if kind < 0.85:
            position = _pick(rng, POSITIONS)
            shapes = [random_shape(rng, position=position)]
            if judge:
                shapes[0].second = _pick(rng, tuple(c for c in COLOURS if c != shapes[0].colour))
            elif mark_colours == "any":
                pretraining_marks(rng, shapes[0])
        elif kind < 0.925:  # two of the same shape
            position = "center"
            first = random_shape(rng, size="small", position="left")
            if mark_colours == "any" and not judge:
                pretraining_marks(rng, first)
            twin = random_shape(rng, cls=first.cls, colour=first.colour, pattern=first.pattern, size="small",
                                position="right", second=first.second)
            shapes = [first, twin]
        else:  # a companion shape
            position = "center"
            shapes = [random_shape(rng, size="small", position="left"),
                      random_shape(rng, size="small", position="right")]
            if mark_colours == "any" and not judge:
                for s in shapes:
                    pretraining_marks(rng, s)
        if all(s.colour != background and (judge or (s.cls, s.colour, background) not in held_out) for s in shapes):
            break
    scene = Scene(background=background, shapes=shapes, position=position)
    scene.labels = _labels(scene)
    return scene


def perturbed(rng, scene: Scene, marks: bool = False) -> Scene:
    """The scene with one said attribute changed (background, colour, class, position, object and
    background colours swapped, or with ``marks`` the first shape's mark colour): a hard negative that
    forces the text encoder to bind words."""
    first = scene.shapes[0]
    kinds = ("background", "colour", "class", "swap") + (("position",) if len(scene.shapes) == 1 else ())
    kind = _pick(rng, kinds + (("marks",) if marks and first.pattern != "plain" else ()))
    shapes = [Shape(**vars(s)) for s in scene.shapes]
    background, position = scene.background, scene.position
    if kind == "background":
        background = _pick(rng, tuple(b for b in BACKGROUNDS if b not in (scene.background, first.colour)))
    elif kind == "colour":
        shapes[0].colour = _pick(rng, tuple(c for c in COLOURS if c not in (first.colour, scene.background)))
    elif kind == "class":
        shapes[0].cls = _pick(rng, tuple(c for c in CLASSES if c != first.cls))
    elif kind == "position":
        position = _pick(rng, tuple(p for p in POSITIONS if p != scene.position))
    elif kind == "marks":
        shapes[0].second = _pick(rng, tuple(c for c in COLOURS if c not in (first.colour, first.second)))
    elif scene.background in COLOURS:
        background, shapes[0].colour = first.colour, scene.background
    else:
        background = _pick(rng, tuple(b for b in BACKGROUNDS if b not in (scene.background, first.colour)))
    if len(shapes) == 2 and kind in ("colour", "class") and scene.labels.get("count") == 2 \
            and scene.shapes[0].cls == scene.shapes[1].cls and scene.shapes[0].colour == scene.shapes[1].colour:
        shapes[1].colour, shapes[1].cls = shapes[0].colour, shapes[0].cls  # twins stay twins
    out = Scene(background=background, shapes=shapes, position=position)
    out.labels = _labels(out)
    return out


def caption(rng, scene: Scene, p_background: float = 0.85, p_position: float = 0.75) -> str:
    shapes = scene.shapes
    if len(shapes) == 1:
        text = _prefixed(rng, shapes[0])
    elif shapes[0].cls == shapes[1].cls and shapes[0].colour == shapes[1].colour:
        text = f"two {_shape_words(rng, shapes[0], say_size=False)} side by side"
    else:
        text = f"{_prefixed(rng, shapes[0])} next to a {_shape_words(rng, shapes[1], say_size=False)}"
    return text + _clauses(rng, scene, p_background, p_position)


def full_caption(cls: str, colour: str, background: str, position: str, size: str, pattern: str | None = None) -> str:
    """The gate prompts' fixed wording: every attribute said once (the pattern too, when given)."""
    shape = f"{pattern} {cls}" if pattern else cls
    return (f"a photo of a {size} {colour} {shape} on a {background} background "
            f"{POSITION_PHRASES[position][0]}")


def dataset(seed: int, n: int, held_out: set | None = None, judge: bool = False, mark_colours: str = "any") -> dict:
    """n pretraining scenes (with ``judge``: evaluator scenes; ``mark_colours``: ``random_scene``): ``images``
    [n, SIZE, SIZE, 3] uint8, ``captions``, ``negatives`` (the same wording of a perturbed scene, its mark
    colour among the changes when pretraining has coloured marks; equal to the caption when the change was
    not said) and ``labels`` (class index per read-out head, -1 where the head does not apply)."""
    marks = mark_colours == "any" and not judge
    rng = np.random.default_rng(seed)
    held_out = held_out_triples() if held_out is None else held_out
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    captions, negatives, labels = [], [], {h: np.full(n, -1, np.int64) for h in HEADS}
    for i in range(n):
        scene = random_scene(rng, held_out, judge, mark_colours)
        images[i] = render(scene)
        wording = np.random.default_rng()
        wording.bit_generator.state = rng.bit_generator.state
        captions.append(caption(rng, scene))
        negatives.append(caption(wording, perturbed(np.random.default_rng([seed, i]), scene, marks)))
        for head, value in scene.labels.items():
            labels[head][i] = HEADS[head].index(value)
    return {"images": images, "captions": captions, "negatives": negatives, "labels": labels}


def object_view(rng, cls: str, colour: str, pattern: str, second: str) -> Scene:
    """One object in a scene drawn as the prompt set varies it: any background, place and size, alone, beside
    its twin, or beside another shape."""
    background = _pick(rng, tuple(b for b in BACKGROUNDS if b != colour))
    kind = rng.random()

    def own(size, where):
        return random_shape(rng, cls=cls, colour=colour, pattern=pattern, size=size, position=where, second=second)

    if kind < 0.7:
        position = _pick(rng, POSITIONS)
        shapes = [own(None, position)]
    else:
        position = "center"
        while True:
            other = own("small", "right") if kind < 0.85 else random_shape(rng, size="small", position="right")
            if other.colour != background:
                break
        shapes = [own("small", "left"), other]
    scene = Scene(background=background, shapes=shapes, position=position)
    scene.labels = _labels(scene)
    return scene


OBJECT_HEADS = {"class": CLASSES, "colour": tuple(COLOURS), "pattern": PATTERNS, "second": tuple(COLOURS)}


def object_views(seed: int, n: int) -> dict:
    """n objects of any class, colour, pattern and mark colour, each in an ``object_view``: ``images``
    [n, SIZE, SIZE, 3] uint8 and ``labels`` (index per ``OBJECT_HEADS`` head): what the image encoder
    learns to name, whatever the scene around the object."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = {h: np.empty(n, np.int64) for h in OBJECT_HEADS}
    for i in range(n):
        cls, colour, pattern = _pick(rng, CLASSES), _pick(rng, tuple(COLOURS)), _pick(rng, PATTERNS)
        second = _pick(rng, tuple(c for c in COLOURS if c != colour))
        images[i] = render(object_view(rng, cls, colour, pattern, second))
        for head, value in zip(OBJECT_HEADS, (cls, colour, pattern, second)):
            labels[head][i] = OBJECT_HEADS[head].index(value)
    return {"images": images, "labels": labels}


# --------------------------------------------------------------------------- #
# Vocabulary, subjects, prompts
# --------------------------------------------------------------------------- #
def vocabulary() -> list[str]:
    """Every word a caption, a training template or the prompt set can contain, sorted."""
    words = set()
    texts = list(training_templates()) + list(OWN_PREFIXES) + list(BACKGROUND_PHRASES) + PROMPTS
    texts += [p for ps in POSITION_PHRASES.values() for p in ps]
    texts += ["two side by side next to a with stripes dots plain", " ".join(COLOURS), " ".join(BACKGROUNDS),
              " ".join(PATTERNS), " ".join(w for ws in SIZE_WORDS.values() for w in ws),
              " ".join(w for c in CLASSES for w in CLASS_WORDS.get(c, (c,)))]
    for text in texts:
        words.update(split_words(text.replace("{}", " ")))
    return sorted(words)


def split_words(text: str) -> list[str]:
    """The tokenizer's own split: lower-case words, punctuation apart (as its pre-tokenizer does)."""
    import re
    return re.findall(r"\w+|[^\w\s]+", text.lower())


@dataclass(frozen=True)
class Subject:
    name: str
    cls: str
    colour: str
    pattern: str
    second: str   # mark colour; (colour, pattern, second) is never rendered in pretraining
    split: str = "test"  # "validation": only for choosing hyperparameters, never in a reported table


SUBJECTS = (
    Subject("ember_triangle", "triangle", "red", "striped", "yellow"),
    Subject("lagoon_circle", "circle", "blue", "striped", "green"),
    Subject("berry_square", "square", "purple", "dotted", "orange"),
    Subject("leaf_diamond", "diamond", "green", "striped", "yellow"),
    Subject("sun_star", "star", "yellow", "dotted", "red"),
    Subject("night_cross", "cross", "black", "dotted", "yellow"),
    Subject("candy_circle", "circle", "orange", "dotted", "purple"),
    Subject("frost_square", "square", "white", "striped", "blue"),
    Subject("plum_star", "star", "purple", "striped", "green"),
    Subject("coral_diamond", "diamond", "orange", "dotted", "blue"),
    # Validation subjects: of the same kind (every class but the square, each a pattern colour pretraining
    # never renders), appended so that the test subjects' references stay as they were drawn.
    Subject("dusk_triangle", "triangle", "blue", "dotted", "orange", "validation"),
    Subject("moss_cross", "cross", "green", "striped", "purple", "validation"),
    Subject("rose_circle", "circle", "red", "dotted", "green", "validation"),
    Subject("cloud_star", "star", "white", "dotted", "blue", "validation"),
    Subject("sand_diamond", "diamond", "yellow", "striped", "purple", "validation"),
)
SPLITS = ("test", "validation")
REFERENCES_PER_SUBJECT = 5


def subject_references(subject: Subject, seed: int = 0) -> list[np.ndarray]:
    """Reference photos of one subject: varied pose, size and place, on a gray background."""
    rng = np.random.default_rng([seed, SUBJECTS.index(subject)])
    out = []
    for _ in range(REFERENCES_PER_SUBJECT):
        shape = random_shape(rng, cls=subject.cls, colour=subject.colour, pattern=subject.pattern, size="large",
                             second=subject.second)
        shape.radius = float(rng.uniform(8.0, 10.0))
        shape.centre = (16.0 + rng.uniform(-2.5, 2.5), 16.0 + rng.uniform(-2.5, 2.5))
        shape.angle = float(rng.uniform(-0.5, 0.5))
        out.append(render(Scene(background="gray", shapes=[shape])))
    return out


# Evaluation prompts ('{}' = the subject) and what each asks of the image, for the read-out.
PROMPT_ATTRIBUTES = [
    ("a {} on a red background", {"background": "red"}),
    ("a {} on a blue background", {"background": "blue"}),
    ("a {} on a green background", {"background": "green"}),
    ("a {} on a yellow background", {"background": "yellow"}),
    ("a {} at the left", {"position": "left"}),
    ("a {} at the right", {"position": "right"}),
    ("a {} at the top", {"position": "top"}),
    ("a {} at the bottom", {"position": "bottom"}),
    ("a small {}", {"size": "small"}),
    ("a large {}", {"size": "large"}),
    ("two {} side by side", {"count": 2}),
    ("a {} next to a white circle", {"count": 2}),
    ("a {} next to a black triangle", {"count": 2}),
    ("a red {}", {"colour": "red"}),
    ("a blue {}", {"colour": "blue"}),
]
PROMPTS = [p for p, _ in PROMPT_ATTRIBUTES]


def subject_expectation(cls: str, colour: str, pattern: str, second: str, asked: dict) -> dict:
    """What an image of a prompt asking ``asked`` must show of its subject (class, colour, pattern): not
    what the prompt changes (a recolouring), nothing beside a second object (the read-out only counts
    them), and nothing the prompt makes unreadable: the colour on a background of that colour, the
    pattern when the asked colour is that of its marks."""
    if asked.get("count") == 2:
        return {}
    own = {"class": cls, "colour": colour, "pattern": pattern}
    own = {k: v for k, v in own.items() if k not in asked}
    if asked.get("background") == colour:
        own.pop("colour", None)
    if asked.get("colour") == second and pattern != "plain":
        own.pop("pattern", None)
    return own


def prompt_scene(subject: Subject, template: str, attributes: dict, rng) -> Scene:
    """The ground truth of one evaluation prompt for a subject, in a pose drawn from ``rng``: what a perfect
    generator would draw. What the prompt does not ask for is the references' (large, centred, gray)."""
    colour = attributes.get("colour", subject.colour)
    position, background = attributes.get("position", "center"), attributes.get("background", "gray")

    def own(size, where):
        return random_shape(rng, cls=subject.cls, colour=colour, pattern=subject.pattern, size=size, position=where,
                            second=subject.second)

    if attributes.get("count") == 2:
        position = "center"
        if "next to a " in template:  # "a {} next to a <colour> <class>"
            other_colour, other_cls = template.split("next to a ")[1].split()[:2]
            other = random_shape(rng, cls=other_cls, colour=other_colour, pattern="plain", size="small",
                                 position="right")
        else:  # "two {} side by side"
            other = own("small", "right")
        shapes = [own("small", "left"), other]
    else:
        shapes = [own(attributes.get("size", "large"), position)]
    scene = Scene(background=background, shapes=shapes, position=position)
    scene.labels = _labels(scene)
    return scene
