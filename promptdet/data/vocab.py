"""The fixed vocabulary of the synthetic inspection line.

These exact strings appear in ``scenes.jsonl``; the words used in instructions
(synonyms, plurals, adjectives) live in ``promptdet.data.synth.templates``.
"""

CATEGORIES = ("bottle", "can", "box", "screw", "nut", "washer", "gear", "bolt")
COLORS = ("red", "green", "blue", "yellow", "orange", "white", "black", "silver")
DEFECTS = ("scratch", "crack", "dent", "stain", "missing_cap")

# Which defects each category can carry. Thin fasteners are too small at 640x480 for a
# surface defect to be visible, so they carry none; missing_cap is for bottles only.
DEFECTS_BY_CATEGORY = {
    "bottle": ("scratch", "crack", "dent", "stain", "missing_cap"),
    "can": ("scratch", "dent", "stain"),
    "box": ("scratch", "crack", "dent", "stain"),
    "gear": ("scratch", "crack"),
    "washer": ("crack", "scratch"),
    "nut": ("crack", "scratch"),
    "screw": (),
    "bolt": (),
}

# Colours each category is made in (a gear is not white cardboard, a box is not silver).
COLORS_BY_CATEGORY = {
    "bottle": ("red", "green", "blue", "yellow", "orange", "white", "black"),
    "can": ("red", "green", "blue", "yellow", "orange", "white", "black", "silver"),
    "box": ("red", "green", "blue", "yellow", "orange", "white", "black"),
    "screw": ("silver", "black", "yellow"),
    "nut": ("silver", "black", "yellow", "blue"),
    "washer": ("silver", "black", "yellow", "red", "white"),
    "gear": ("silver", "black", "orange", "green", "blue", "red", "white", "yellow"),
    "bolt": ("silver", "black", "yellow"),
}

INSTRUCTION_TYPES = (
    "category",
    "attribute",
    "defect",
    "spatial",
    "superlative",
    "relation",
    "count",
    "negation",
    "exclusion",
    "disjunction",
    "conjunction",
    "jargon",
    "absent",
)

# Types the importers add: a referring expression (RefCOCO) and a grounded phrase (ODVG).
IMPORTED_TYPES = ("referring", "grounding")

# Types whose answer is exactly one box: evaluated with Accuracy@0.5 of the top-1 box.
SINGLE_TARGET_TYPES = ("spatial", "superlative", "relation", "referring")
