"""A small labelled set: three topics, ten training sentences each and five held out."""

from __future__ import annotations

TRAIN = {
    "sports": [
        "The striker scored twice in the second half.",
        "She won the marathon in record time.",
        "The team lost the final on penalties.",
        "He signed a new contract with the basketball club.",
        "The tennis match went to five sets.",
        "Our goalkeeper saved three shots in a row.",
        "The cyclists climbed the mountain stage in the rain.",
        "The coach was fired after ten straight defeats.",
        "Fans filled the stadium for the derby.",
        "The swimmer broke the world record in the relay.",
    ],
    "cooking": [
        "Simmer the sauce for twenty minutes and stir often.",
        "Knead the dough until it is smooth and elastic.",
        "Season the chicken with salt, pepper and paprika.",
        "Chop the onions finely and fry them in butter.",
        "Bake the cake at 180 degrees for forty minutes.",
        "Whisk the eggs with sugar until pale.",
        "Add a pinch of nutmeg to the cream sauce.",
        "Roast the vegetables with olive oil and garlic.",
        "Let the bread rise overnight in the fridge.",
        "Grill the fish for three minutes on each side.",
    ],
    "astronomy": [
        "The telescope captured a distant spiral galaxy.",
        "A comet will pass close to the sun next month.",
        "Astronomers found a planet orbiting a red dwarf.",
        "The moon's craters were formed by ancient impacts.",
        "A supernova was visible in the night sky.",
        "Jupiter has dozens of known moons.",
        "The probe sent back images of Saturn's rings.",
        "Black holes bend light around them.",
        "The Milky Way contains billions of stars.",
        "A meteor shower peaks in August every year.",
    ],
}
HELD_OUT = {
    "sports": [
        "The referee showed him a red card.",
        "They trained hard before the Olympic games.",
        "The runner crossed the finish line first.",
        "The hockey season starts in October.",
        "He hit a home run in the ninth inning.",
    ],
    "cooking": [
        "Stir in the flour and cook until golden.",
        "Marinate the beef in soy sauce overnight.",
        "Peel and dice the potatoes.",
        "Serve the soup with fresh parsley.",
        "Melt the chocolate over a bowl of hot water.",
    ],
    "astronomy": [
        "The eclipse darkened the sky for four minutes.",
        "Mars appears red because of iron oxide.",
        "The nebula is a cloud of gas and dust.",
        "Light from the star took a thousand years to reach us.",
        "The space telescope observed an exoplanet's atmosphere.",
    ],
}


def training_items(*, labels: tuple[str, ...] = tuple(TRAIN)) -> list[dict[str, str]]:
    """Jina's TextTrainingItems, the topics interleaved."""
    rows = zip(*(TRAIN[label] for label in labels), strict=True)
    return [
        {"text": text, "label": label}
        for row in rows
        for label, text in zip(labels, row, strict=True)
    ]


def held_out() -> tuple[list[str], list[str]]:
    """Texts and their true labels."""
    texts = [text for label in HELD_OUT for text in HELD_OUT[label]]
    return texts, [label for label in HELD_OUT for _ in HELD_OUT[label]]
