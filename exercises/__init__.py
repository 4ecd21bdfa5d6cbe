"""Classroom exercises on Speculative Streaming, with a checker and a grader: see exercises/README.md (students)
and docs/TEACHING.md (teachers).

    python -m exercises check 1                      # checks exercises/ex1_msa_mask.py
    python -m exercises check 1 --module my/ex1.py   # checks another file
    python -m exercises check final --dir my/        # your pieces of exercises 1-7 inside the real decode loop
    python -m exercises check all                    # 1-8, then final
    python -m exercises grade SUBMISSIONS/           # a whole class
"""
