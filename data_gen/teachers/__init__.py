"""Teacher backends behind one interface (`base.Teacher`): hf, openai, scene."""
