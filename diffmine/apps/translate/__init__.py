"""Label-to-label translation (Plug-and-Play, SDEdit): run_translate(TranslateConfig(...)) -> a translations folder."""
