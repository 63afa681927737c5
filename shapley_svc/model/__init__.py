"""Loading Hugging Face causal LMs and switching their decoder blocks / sublayers at run time."""
