"""Names of things that are not parts of the inspection line: the "foreign" side of prompt familiarity.

A prompt is judged against instructions the model was trained on and against the same
instructions with their part names swapped for these words (``promptdet.text.familiarity``). The
list is broad on purpose (animals, people, vehicles, food, furniture, electronics, clothing,
nature, buildings, sport, household and workshop things), so that a name nobody wrote here still
lands nearer to one of these than to a bottle or a gear. Every fifth word is held out of the
bank and used only to measure how well that generalises (``HELD_OUT``).
"""

from __future__ import annotations

_WORDS = """
dog cat horse cow sheep pig goat chicken duck goose bird parrot eagle owl pigeon fish shark whale dolphin
elephant giraffe zebra lion tiger leopard bear panda monkey gorilla kangaroo rabbit mouse rat squirrel
deer fox wolf camel snake lizard turtle frog spider butterfly bee ant mosquito crab lobster octopus
person man woman child baby boy girl pedestrian crowd face hand head player rider worker soldier doctor
car truck bus van taxi motorcycle bicycle scooter train tram subway airplane helicopter boat ship yacht
canoe tractor ambulance fire truck police car skateboard rocket submarine
apple banana orange fruit lemon grape strawberry watermelon pineapple cherry peach pear tomato potato
carrot broccoli onion cabbage corn mushroom pizza sandwich hamburger hot dog donut cake cookie bread
cheese egg rice noodles soup salad steak sausage chocolate ice cream candy coffee tea wine beer juice
chair table sofa couch bed desk bench shelf bookcase wardrobe drawer cabinet stool armchair mattress
cushion pillow blanket carpet rug curtain lamp chandelier mirror clock vase plant flowerpot
television laptop computer keyboard monitor phone smartphone tablet camera microphone speaker headphones
remote control printer router cable charger battery light bulb circuit board microchip solar panel
solar cell drone robot
shirt jacket coat dress skirt trousers jeans shoe boot sneaker sandal hat cap helmet glove sock scarf
tie belt handbag backpack suitcase wallet umbrella watch necklace ring earring glasses sunglasses
tree flower grass leaf bush forest mountain hill river lake sea ocean beach wave cloud sky sun moon star
rock stone sand snow ice rain rainbow waterfall island desert field garden
house building skyscraper church castle bridge tower road street sidewalk fence wall roof window door
stairs chimney tent barn factory warehouse parking lot traffic light stop sign street sign fire hydrant
parking meter mailbox lamppost
ball football basketball tennis racket baseball bat golf club surfboard skis snowboard kite frisbee
sled trophy medal
book newspaper magazine pen pencil paper envelope notebook scissors stapler calculator map flag poster
painting photograph sculpture statue toy doll teddy bear puzzle balloon gift candle
cup mug glass plate bowl fork knife spoon chopsticks pan pot kettle toaster microwave oven refrigerator
sink faucet toilet bathtub shower towel soap toothbrush toothpaste hair dryer comb broom bucket vacuum cleaner
hammer wrench screwdriver drill saw pliers ladder shovel axe rope chain key lock tape ruler paintbrush
guitar piano violin drum trumpet flute
tire wheel engine steering wheel seat license plate headlight
"""

# Multi-word names are kept whole; the rest of the list is single words.
_MULTI = ("fire truck", "police car", "hot dog", "ice cream", "remote control", "light bulb", "circuit board",
          "solar panel", "solar cell", "parking lot", "traffic light", "stop sign", "street sign", "fire hydrant",
          "parking meter", "tennis racket", "golf club", "teddy bear", "hair dryer", "vacuum cleaner",
          "steering wheel", "license plate")


def _parse(text: str) -> tuple[str, ...]:
    words: list[str] = []
    for line in text.strip().splitlines():
        rest = line
        for name in _MULTI:
            if name in rest:
                words.append(name)
                rest = rest.replace(name, " ")
        words += rest.split()
    return tuple(dict.fromkeys(words))


GENERAL_NOUNS = _parse(_WORDS)
BANK_NOUNS = tuple(w for i, w in enumerate(GENERAL_NOUNS) if i % 5 != 4)
HELD_OUT = tuple(w for i, w in enumerate(GENERAL_NOUNS) if i % 5 == 4)
