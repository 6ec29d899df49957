"""The mini world: procedural 32-px scenes of coloured, patterned shapes, with captions.

Everything is a pure function of a seed: a scene is drawn from ``numpy.random.Generator``,
rendered at 4x and box-downsampled (anti-aliased edges), and described by a caption whose
wording, synonyms and clause order are drawn from the same generator. Scenes carry their
ground truth (``labels``) for the attribute read-out.

Held out of pretraining, by construction:
* one (class, colour, background) triple in eight: the base-model gate prompts them;
* pattern second colours other than white and black: the personal subjects use them.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from importlib import resources

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
RADII = {"small": (4.5, 5.5), "large": (8.0, 9.5)}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "with a {} background")
OWN_PREFIXES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a {}", "a drawing of a {}")
COUNTS = (1, 2)
# The read-out's heads and their classes, in a fixed order.
HEADS = {"class": CLASSES, "colour": tuple(COLOURS), "pattern": PATTERNS, "background": tuple(BACKGROUNDS),
         "position": POSITIONS, "size": SIZES, "count": COUNTS}
PRETRAIN_SECOND = ("white", "black")  # the only pattern colours pretraining ever renders


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
            marks = mask & ((u / 4.0) % 1.0 < 0.5)
        elif s.pattern == "dotted":
            du, dv = (u / 5.0) % 1.0 - 0.5, (v / 5.0) % 1.0 - 0.5
            marks = mask & (du * du + dv * dv <= 0.05)
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


def random_scene(rng, held_out: set, judge: bool = False) -> Scene:
    """A pretraining scene; never a held-out triple, never a non-white/black pattern. With ``judge``, a
    scene for the evaluators instead: any pattern colour (but the shape's own) and every triple, since a
    judge must read the subjects and prompts the generator was never shown."""
    kind = rng.random()
    while True:
        background = _pick(rng, tuple(BACKGROUNDS))
        if kind < 0.85:
            position = _pick(rng, POSITIONS)
            shapes = [random_shape(rng, position=position)]
            if judge:
                shapes[0].second = _pick(rng, tuple(c for c in COLOURS if c != shapes[0].colour))
        elif kind < 0.925:  # two of the same shape
            position = "center"
            first = random_shape(rng, size="small", position="left")
            twin = random_shape(rng, cls=first.cls, colour=first.colour, pattern=first.pattern, size="small",
                                position="right")
            shapes = [first, twin]
        else:  # a companion shape
            position = "center"
            shapes = [random_shape(rng, size="small", position="left"),
                      random_shape(rng, size="small", position="right")]
        if all(s.colour != background and (judge or (s.cls, s.colour, background) not in held_out) for s in shapes):
            break
    scene = Scene(background=background, shapes=shapes, position=position)
    scene.labels = _labels(scene)
    return scene


def perturbed(rng, scene: Scene) -> Scene:
    """The scene with one said attribute changed (background, colour, class, position, or object
    and background colours swapped): a hard negative that forces the text encoder to bind words."""
    first = scene.shapes[0]
    kind = _pick(rng, ("background", "colour", "class", "swap") + (("position",) if len(scene.shapes) == 1 else ()))
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


def full_caption(cls: str, colour: str, background: str, position: str, size: str) -> str:
    """The gate prompts' fixed wording: every attribute said once."""
    return (f"a photo of a {size} {colour} {cls} on a {background} background "
            f"{POSITION_PHRASES[position][0]}")


def dataset(seed: int, n: int, held_out: set | None = None, judge: bool = False) -> dict:
    """n pretraining scenes (with ``judge``: evaluator scenes, ``random_scene``): ``images`` [n, SIZE, SIZE, 3]
    uint8, ``captions``, ``negatives`` (the same wording of a perturbed scene; equal to the caption when the
    change was not said) and ``labels`` (class index per read-out head, -1 where the head does not apply)."""
    rng = np.random.default_rng(seed)
    held_out = held_out_triples() if held_out is None else held_out
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    captions, negatives, labels = [], [], {h: np.full(n, -1, np.int64) for h in HEADS}
    for i in range(n):
        scene = random_scene(rng, held_out, judge)
        images[i] = render(scene)
        wording = np.random.default_rng()
        wording.bit_generator.state = rng.bit_generator.state
        captions.append(caption(rng, scene))
        negatives.append(caption(wording, perturbed(np.random.default_rng([seed, i]), scene)))
        for head, value in scene.labels.items():
            labels[head][i] = HEADS[head].index(value)
    return {"images": images, "captions": captions, "negatives": negatives, "labels": labels}


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
    second: str   # never a pretraining pattern colour: the combination is new to the world
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
