"""The judge's prompts: our Japanese rubric, the single-answer and pairwise templates, with and without a
reference, and the retry text. Everything the judge reads besides the question and the answers is here, so its
sha256 (recorded with every result) names exactly what was asked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """Everything a judge sees besides the question and answers: system prompt, user template, retry text."""

    name: str
    system: str
    user: str
    retry: str

    @property
    def sha256(self) -> str:
        """A fingerprint of the template, recorded with every result: scores from different prompts differ."""
        text = json.dumps({"system": self.system, "user": self.user, "retry": self.retry}, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def messages(self, **fields: str) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.format(**fields)}]


CRITERIA = (
    "評価の観点:\n"
    "1. 有用性: ユーザーが求めていることに実際に応えているか。\n"
    "2. 関連性: 質問に沿った内容か。質問と関係のない話や不要な前置きがないか。\n"
    "3. 正確性: 事実、計算、推論、プログラムに誤りがないか。\n"
    "4. 深さ: 質問に必要なだけの説明、根拠、具体例があるか。必要以上に長い必要はない。\n"
    "5. 日本語の質: 自然で正しい日本語か。日本語の質問には日本語で答える必要がある。"
    "質問が求めていないのに英語など他の言語で答えた回答、複数の言語が混ざって読みにくい回答、"
    "同じ文の繰り返しや途中で途切れた回答は、内容が正しくても低く評価する。"
)
SCALE = (
    "採点の目安:\n"
    "- 1〜2点: 質問に答えていない、または大部分が誤っている。\n"
    "- 3〜4点: 答えようとしているが、重大な誤りや欠落がある。\n"
    "- 5〜6点: おおむね正しいが、不正確な点や不足がある。\n"
    "- 7〜8点: 正確で役に立ち、小さな改善点があるだけ。\n"
    "- 9〜10点: 正確で十分、簡潔で自然な日本語の、模範となる回答。\n"
    "質問が求めていないのに日本語以外で書かれた回答は、内容が正しくても3点以下としてください。"
)
FAIRNESS = (
    "回答の長さで評価を決めないでください。長い回答が良い回答とは限りません。できるだけ客観的に評価してください。"
)
PAIR_FAIRNESS = "回答が示された順番やアシスタントの名前で判断しないでください。"
REFERENCE_RULE = (
    "参考解答が示されているので、回答の正しさは参考解答と照らし合わせて判断してください。"
    "結論が参考解答と食い違う回答は、説明が丁寧でも正確性を低く評価してください。"
)
SINGLE_OPENING = (
    "あなたは日本語のAIアシスタントの回答を採点する、公平で厳格な評価者です。"
    "ユーザーの質問とアシスタントの回答を読み、次の観点で回答の質を1から10の整数で評価してください。"
)
SINGLE_CLOSING = (
    "まず回答の良い点と問題点を簡潔に述べ、最後の行に評価を「[[N]]」の形式で書いてください"
    "（Nは1から10の整数。例: [[6]]）。"
)
PAIR_OPENING = (
    "あなたは日本語のAIアシスタントの回答を比較する、公平で厳格な評価者です。"
    "ユーザーの質問と、アシスタントAとアシスタントBの回答を読み、"
    "どちらが質問により良く答えているかを次の観点で判定してください。"
)
PAIR_CLOSING = (
    "まず2つの回答を比較して簡潔に説明し、最後の行に判定を書いてください。"
    "Aの方が良ければ[[A]]、Bの方が良ければ[[B]]、同程度なら[[C]]と書いてください。"
)


def _system(opening: str, rubric: str, fairness: str, closing: str) -> str:
    """A judge's system prompt: its task, the rubric, what not to judge by, and the output format last."""
    return "\n\n".join([opening, rubric, fairness, closing])


QUESTION_BLOCK = "[ユーザーの質問]\n{question}\n\n"
REFERENCE_BLOCK = "[参考解答の始まり]\n{reference}\n[参考解答の終わり]\n\n"
ANSWER_BLOCK = "[アシスタントの回答の始まり]\n{answer}\n[アシスタントの回答の終わり]"
PAIR_BLOCK = (
    "[アシスタントAの回答の始まり]\n{answer_a}\n[アシスタントAの回答の終わり]\n\n"
    "[アシスタントBの回答の始まり]\n{answer_b}\n[アシスタントBの回答の終わり]"
)
SINGLE_RETRY = "評価を「[[N]]」の形式（Nは1から10の整数）だけで、もう一度書いてください。"
PAIR_RETRY = "判定を [[A]]、[[B]]、[[C]] のどれか一つだけで、もう一度書いてください。"
SINGLE = PromptTemplate(
    "single",
    _system(SINGLE_OPENING, CRITERIA + "\n\n" + SCALE, FAIRNESS, SINGLE_CLOSING),
    QUESTION_BLOCK + ANSWER_BLOCK,
    SINGLE_RETRY,
)
SINGLE_REFERENCE = PromptTemplate(
    "single-reference",
    _system(SINGLE_OPENING, CRITERIA + "\n\n" + SCALE, FAIRNESS + REFERENCE_RULE, SINGLE_CLOSING),
    QUESTION_BLOCK + REFERENCE_BLOCK + ANSWER_BLOCK,
    SINGLE_RETRY,
)
PAIR = PromptTemplate(
    "pair",
    _system(PAIR_OPENING, CRITERIA, FAIRNESS + PAIR_FAIRNESS, PAIR_CLOSING),
    QUESTION_BLOCK + PAIR_BLOCK,
    PAIR_RETRY,
)
PAIR_REFERENCE = PromptTemplate(
    "pair-reference",
    _system(PAIR_OPENING, CRITERIA, FAIRNESS + PAIR_FAIRNESS + REFERENCE_RULE, PAIR_CLOSING),
    QUESTION_BLOCK + REFERENCE_BLOCK + PAIR_BLOCK,
    PAIR_RETRY,
)
