"""The model catalog as data: what each model accepts (spec), the models (models) and their
prices (pricing)."""
