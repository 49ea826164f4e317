"""LLM-as-a-judge for open Japanese questions, in the style of MT-Bench and the Japanese Vicuna QA benchmark.

Open questions ("write a letter", "explain ...") have no single right answer to match, so a strong model grades
the answers. Two modes, as FastChat's `llm_judge` has them:

* single-answer grading: the judge reads one answer and ends its reply with `[[N]]`, N from 1 to 10;
* pairwise: the judge reads two answers and ends with `[[A]]`, `[[B]]` or `[[C]]` (tie). Judges prefer the
  answer shown first (position bias), so every pair is judged in both orders; a model wins a question only
  when both orders say so, and orders that disagree make a tie.

The rubric is ours, in Japanese, stated in the prompt: helpfulness, relevance, accuracy, depth and Japanese
quality, where an answer not written in Japanese (unless asked for) scores 3 at most. Questions with a
`reference` answer (math, reasoning, coding) are graded against it.

A reply without a parsable verdict is asked again once: the retry continues the conversation (the judge's own
reply, then "answer with [[N]] only"), so its payload differs from the first and the runner's payload cache
cannot hand back the same failure. A second failure is counted and the question is *excluded* from the scores
(never averaged in as -1, as ja-vicuna-qa-benchmark does, which drags a model down for the judge's mistakes).

Every result records what is needed to trust or redo it: the judge's model name, the sha256 of each prompt
template (all text the judge sees), the temperature (0 by default), parse failures, per-question scores or
verdicts, and the judge's raw replies.
"""
