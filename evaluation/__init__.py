"""Choose a model with evidence: score models on your own labelled images (`imgsearch evaluate`)."""
