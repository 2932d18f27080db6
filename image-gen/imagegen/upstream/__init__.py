"""Where images come from: the OpenAI (or compatible) client and the providers over it."""
