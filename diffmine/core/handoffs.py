"""Names of the files one command leaves for another (a folder is the hand-off between stages)."""

# `diffmine translate` writes it into its output folder; `diffmine changes` reads the model and
# settings of the translations from it.
TRANSLATIONS_META = "translate.json"
