"""Host-side data: image/text processing for the student, tiny tokenizer, input pipeline."""
