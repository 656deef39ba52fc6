"""Reading the text in pictures: the engine (``reader``) and the query words matched inside what it read
(``matching``). The indexer's text stage (``indexer/text_stage.py``) fills the ``image_text`` column with it."""
