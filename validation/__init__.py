"""The validation kit behind `validate.py` (the guide: VALIDATING.md), one job per module:

    records.py  reading and writing the kit's JSON-lines files (prompts, traces), every error with file and line
    traces.py   golden traces of this project's generate_speculative
    causes.py   the likely cause of each kind of divergence, as compare reports it
    compare.py  the first divergence of a candidate trace from a reference trace
    outputs.py  the outputs-only check: answers files, accounting of accepted lengths, drafting against the reference
    minimal.py  specstream_minimal.py as "the other implementation" (weights read by hand, its own trace)
    hf_port.py  the same on top of Hugging Face transformers (GPT2LMHeadModel + the streams on its blocks)
"""
