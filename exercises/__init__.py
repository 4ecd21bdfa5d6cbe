"""Classroom exercises on Speculative Streaming, with a checker: see exercises/README.md.

    python -m exercises check 1                      # checks exercises/ex1_msa_mask.py
    python -m exercises check 1 --module my/ex1.py   # checks another file
    python -m exercises check 7 --dir my/            # your six files inside the real decode loop
    python -m exercises check all                    # 1-6, then 7
"""
