"""The instruction suite: 17 small task types in four clusters, each with five phrasings.

The last phrasing of every task is held out of train and validation (it appears in test only), so
evaluation can tell following an instruction from memorising its wording. A few tasks share skills
and vocabulary with the SFT tasks (``related``) so that transfer can show up; the rest do not.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from hybridft.demo import synth_instruction_drafts as d
from hybridft.demo.synth_instruction_drafts import InstructionDraft


@dataclass(frozen=True)
class InstructionTask:
    name: str
    cluster: str
    domain: str
    skills: tuple[str, ...]
    related: tuple[str, ...]  # SFT tasks this one shares skills with
    phrasings: tuple[str, ...]  # the last one is held out; "{input}" inlines the input
    make: Callable[[random.Random], InstructionDraft]
    labels: tuple[str, ...] = ()  # closed output set (classification, yes/no), for balance
    system: str | None = None  # set: rows are written in chat format with this system turn


# --- the suite ----------------------------------------------------------------------------------

_CLS = ("classification",)
INSTRUCTION_TASKS = (
    InstructionTask("sentiment", "classification", "general", _CLS + ("sentiment",), (), (
        "What is the sentiment of this review? Answer positive, negative or neutral.",
        "Classify the review as positive, negative or neutral.",
        "Is the tone of this text positive, negative or neutral?",
        "Label the sentiment (positive / negative / neutral).",
        "How does the writer feel? Reply with positive, negative or neutral.",
    ), d.sentiment, tuple(d.SENTIMENT), system="You are a careful text classifier."),
    InstructionTask("topic", "classification", "general", _CLS + ("topic",), (), (
        "Which topic is this headline about: sports, politics, technology, food or weather?",
        "Classify the headline into sports, politics, technology, food or weather.",
        "Give the topic of the headline (sports/politics/technology/food/weather).",
        "Pick one topic for this headline: sports, politics, technology, food, weather.",
        "Which section does this belong in? sports, politics, technology, food or weather.",
    ), d.topic, tuple(d.TOPICS)),
    InstructionTask("urgency_detect", "classification", "it", _CLS + ("urgency",), ("it_desk",), (
        "How urgent is this message? Answer low, medium or high.",
        "Rate the urgency of the message as low, medium or high.",
        "Classify the urgency (low / medium / high).",
        "Is this message low, medium or high priority?",
        "Decide how quickly this needs handling: low, medium or high.",
    ), d.urgency, ("low", "medium", "high")),
    InstructionTask("request_language", "classification", "general", _CLS + ("language_id",), (), (
        "Which language is this request written in? Answer english, spanish, french or german.",
        "Identify the language of the text (english/spanish/french/german).",
        "Name the language of this message: english, spanish, french or german.",
        "What language is used here? english, spanish, french or german.",
        "Tell me the language of the request, one of english, spanish, french, german.",
    ), d.language, tuple(d.LANGUAGES)),
    InstructionTask("extract_order_number", "extraction", "support", ("extraction", "order_number"),
                    ("support",), (
        "Extract the order number from the message.",
        "What is the order number mentioned? Give only the number.",
        "Find the order ID in this text and return only it.",
        "Pull out the order number.",
        "Which order is the customer talking about? Reply with its number only.",
    ), d.order_number),
    InstructionTask("extract_date", "extraction", "general", ("extraction", "dates"), (), (
        "Extract the date and write it as YYYY-MM-DD.",
        "What date is mentioned? Answer in ISO format (YYYY-MM-DD).",
        "Find the date in the text and give it as YYYY-MM-DD.",
        "Return the date from this sentence in YYYY-MM-DD form.",
        "Convert the date in the message to YYYY-MM-DD.",
    ), d.date),
    InstructionTask("extract_email", "extraction", "general", ("extraction", "emails"), (), (
        "Extract the email address.", "What email address appears in the text?",
        "Find the email address and return it.", "Give me the email address from this message.",
        "Copy out the email address mentioned here.",
    ), d.email),
    InstructionTask("extract_person_name", "extraction", "general", ("extraction", "names"), (), (
        "Extract the full name of the person mentioned.", "Who is the person named in the text?",
        "Find the person's name and return it.", "Give the first and last name in this sentence.",
        "Which person does the text mention? Full name only.",
    ), d.person),
    InstructionTask("extract_amount", "extraction", "compliance", ("extraction", "numbers"),
                    ("compliance",), (
        "Extract the dollar amount as a plain number.",
        "How many dollars are mentioned? Digits only.",
        "Find the money amount and write it without symbols or commas.",
        "What is the amount in dollars? Answer with the number.",
        "Give the sum of money in the text as digits only.",
    ), d.amount),
    InstructionTask("uppercase", "rewriting", "general", ("rewriting", "casing"), (), (
        "Rewrite the text in uppercase.", "Convert this to capital letters.",
        "Make every letter uppercase.", "Uppercase: {input}",
        "Shout this by writing it in all caps.",
    ), d.uppercase),
    InstructionTask("reverse_words", "rewriting", "general", ("rewriting", "word_order"), (), (
        "Reverse the order of the words.", "Write the words in reverse order.",
        "Reverse the word order: {input}", "Put these words backwards, last word first.",
        "Flip the sequence of words so the last comes first.",
    ), d.reverse),
    InstructionTask("polite_rewrite", "rewriting", "support",
                    ("rewriting", "politeness", "templated_reply"), ("support",), (
        "Rewrite this message politely.", "Make this request polite.",
        "Turn this into a courteous request.", "Rephrase the message so it sounds polite.",
        "Soften this demand into a polite question.",
    ), d.polite, system="You rewrite customer messages."),
    InstructionTask("remove_filler", "rewriting", "general", ("rewriting", "shortening"), (), (
        "Remove the filler words.", "Shorten the sentence by deleting filler words.",
        "Delete words like just, really and basically.", "Make this more concise: {input}",
        "Cut the unnecessary filler from the sentence.",
    ), d.filler),
    InstructionTask("arithmetic", "qa", "general", ("arithmetic", "numbers"), (), (
        "What is {input}?", "Compute {input}.", "Calculate {input} and give only the number.",
        "{input} = ?", "Work out {input}.",
    ), d.arithmetic),
    InstructionTask("fictional_capital", "qa", "general", ("reading", "lookup"), (), (
        "According to the text, what is the capital of {country}?",
        "Name the capital of {country} using the passage.",
        "Which city is the capital of {country}? Answer from the context.",
        "Read the passage and give the capital city of {country}.",
        "From the context only: {country}'s capital is which city?",
    ), d.capital, system="Answer using only the given context."),
    InstructionTask("yes_no_context", "qa", "general", ("reading", "yes_no"), (), (
        "{question} Answer yes or no.", "Based on the text: {question} Reply yes or no.",
        "Read the facts and answer yes or no. {question}", "Yes or no: {question}",
        "Using only these sentences, answer yes or no: {question}",
    ), d.yes_no, ("yes", "no")),
    InstructionTask("threshold_compare", "qa", "compliance",
                    ("threshold_comparison", "numbers", "yes_no"), ("compliance",), (
        "Is the observed value within the limit? Answer yes or no.",
        "Does the value stay at or under the limit? yes or no.",
        "Within the limit (yes) or over it (no)?",
        "Answer yes if the value does not exceed the limit, otherwise no.",
        "Is the observed figure allowed under the limit? Reply yes or no.",
    ), d.threshold, ("yes", "no")),
)  # fmt: skip
