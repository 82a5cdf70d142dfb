"""diffmine's roof: the `diffmine` command. The stages live in finetune/, typicality/, mining/
and the applications' packages; this package only parses and calls them."""
