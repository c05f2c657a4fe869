"""GPT on gutenberg-en: public-domain English books, a BPE-8192 tokenizer, memory-mapped tokens."""
