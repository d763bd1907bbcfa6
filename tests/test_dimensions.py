"""Dimension labels and questions map onto the six perception dimensions as a reader would."""
import pytest

from zwz_jax.dimensions import infer_dimension, normalise_dimension

# Fine-grained questions in the style of ZoomBench (one small region of a large image), written from
# the dimension definitions the question writers are given (data_gen/prompts.DIMENSION_GUIDE).
QUESTIONS = {
    "counting": [
        "How many buttons are on the remote control?",
        "How many people are standing on the balcony?",
        "What is the number of windows on the second floor of the building?",
        "How many birds are perched on the wire?",
        "Count the traffic cones near the crosswalk. How many are there?",
        "How many letters are written on the red sign?",  # counts, though it mentions writing
        "How many stripes does the flag have?",  # counts, though stripes are a pattern
        "How many boats are moored at the far end of the pier?",
    ],
    "ocr": [
        "What is written on the blue street sign?",
        "What does the text on the white truck say?",
        "What number is painted on the bus?",
        "Which word appears on the shop awning?",
        "What is the license plate number of the silver car?",
        "What brand name is printed on the bottle?",
        "Read the price on the small tag. What is it?",
        "What is the title of the book on the top shelf?",
        "Which digit is shown on the jersey of the player on the left?",
        "What letters are on the tail of the airplane?",
    ],
    "colour": [
        "What colour is the cyclist's helmet?",
        "What color are the shoelaces of the man in the red jacket?",
        "What is the colour of the text on the sign?",  # asks the colour, not the text
        "Which colour is the umbrella held by the woman?",
        "What color is the small flag on top of the boat?",
        "What hue is the car parked behind the tree?",
        "Is the door of the distant house painted in a blue or green colour?",
    ],
    "material": [
        "What material is the bench seat made of?",
        "What is the fence made of?",
        "Is the table wooden, metal, or plastic?",
        "What kind of fabric is the curtain in the window?",
        "What texture does the wall behind the lamp have?",
        "What is the vase on the windowsill made from?",
        "What material are the stairs leading to the entrance?",
    ],
    "structure": [
        "What shape is the sign on the door?",
        "What pattern is on the woman's scarf?",
        "How are the chairs arranged around the table?",
        "Which direction is the arrow on the road pointing?",
        "What geometric form does the logo on the van have?",
        "Is the shirt of the boy striped or plain?",
        "Which way is the statue on the roof facing?",
    ],
    "identification": [
        "What is the man holding in his left hand?",
        "What animal is sitting on the roof?",
        "What kind of vehicle is parked next to the hydrant?",
        "Which object is on the top shelf?",
        "What is hanging from the ceiling above the counter?",
        "What type of tree is behind the fence?",
        "What is the child riding?",
        "Who is standing next to the door of the cafe?",
    ],
}


@pytest.mark.parametrize("dimension,question", [(d, q) for d, qs in QUESTIONS.items() for q in qs])
def test_questions_are_read_as_a_reader_would(dimension, question):
  assert infer_dimension(question) == dimension


def test_the_table_covers_every_dimension():
  from zwz_jax.records import DIMENSIONS
  assert set(QUESTIONS) == set(DIMENSIONS) and sum(map(len, QUESTIONS.values())) >= 40


@pytest.mark.parametrize("label,dimension", [
    ("Color", "colour"), ("colours", "colour"), ("Color Attributes", "colour"), ("text/OCR", "ocr"),
    ("Fine-Grained Counting", "counting"), ("how many", "counting"), ("Texture", "material"),
    ("object recognition", "identification"), ("shape", "structure"), ("material type", "material"),
    ("counting", "counting"), ("colour and shape", None), ("weather", None), (None, None), (3, None),
])
def test_labels_normalise(label, dimension):
  assert normalise_dimension(label) == dimension
