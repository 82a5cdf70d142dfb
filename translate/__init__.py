"""Label-to-label translation (Plug-and-Play, SDEdit) and consistent changes (co-typicality).

    run_translate(TranslateConfig(model=..., data=..., out=..., to="all"))   -> TR_DIR
    run_changes(ChangesConfig(model=..., translations=TR_DIR, out=...))     -> CH_DIR/report.html
"""
