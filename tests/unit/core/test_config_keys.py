"""No configuration key is accepted and then ignored: every field of the config dataclasses
is read somewhere outside config.py."""

import ast
import dataclasses
from pathlib import Path

import pytest

from mvptr.core import config
from mvptr.tasks import TASKS
from mvptr.train.objective import MASKED_INPUTS
from mvptr.train.recipes import OBJECTIVES

SRC = Path(config.__file__).parents[1]  # the package: config.py lives in core/

# fields read under a name held in a string, by getattr: the objective switches (recipes and
# masking: getattr(objectives, name) for each name in OBJECTIVES), the masking probabilities
# (getattr(objectives, MASKED_INPUTS[kind])). The tasks' sections are the entries of the mapping
# Config.finetune, one per task of the table (checked below)
READ_BY_NAME = {"ObjectiveConfig": set(OBJECTIVES) | set(MASKED_INPUTS.values())}


def attributes_read_outside_config() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        if path == Path(config.__file__):
            continue
        names |= {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
    return names


def config_fields():
    for name, cls in vars(config).items():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__:
            for f in dataclasses.fields(cls):
                yield name, f.name


def test_every_config_field_is_read_outside_config_py():
    read = attributes_read_outside_config()
    unread = [f"{cls}.{field}" for cls, field in config_fields()
              if field not in read and field not in READ_BY_NAME.get(cls, ())]
    assert not unread, f"config fields that nothing reads: {unread}"


def test_the_fields_read_by_name_are_exactly_those_names():
    fields = {}
    for cls, field in config_fields():
        fields.setdefault(cls, set()).add(field)
    assert READ_BY_NAME["ObjectiveConfig"] <= fields["ObjectiveConfig"]


def test_the_finetune_sections_are_exactly_the_tasks_of_the_table():
    from mvptr.core.errors import ConfigError
    from mvptr.tasks import load_config

    assert list(load_config("tiny").finetune) == list(TASKS)
    with pytest.raises(ConfigError, match="finetune.nosuchtask: no task of that name.*registered tasks: retrieval"):
        load_config("tiny", ["finetune.nosuchtask.max_eval=3"])


@pytest.mark.slow
def test_a_task_field_the_task_does_not_read_is_an_error():
    import pytest

    from mvptr.core.config import load_config as load_raw_config
    from mvptr.core.config import task_section
    from mvptr.core.errors import ConfigError
    from mvptr.tasks import load_config
    from mvptr.workflows.finetune import check_task_config

    for task, key, value in (("retrieval", "questions", "q.json"), ("grounding", "features", "f.tsv"),
                             ("grounding", "mask_regions", "true"), ("vqa", "hypotheses", "h.jsonl"),
                             ("vqa", "train.objectives", "[mlm]")):
        with pytest.raises(ConfigError, match=f"finetune.{task}.{key}"):  # when the config is built
            load_config("tiny", [f"finetune.{task}.{key}={value}"])
        raw = load_raw_config("tiny", [f"finetune.{task}.{key}={value}"]).finetune[task]
        with pytest.raises(ConfigError, match=f"finetune.{task}.{key}"):  # and when the task reads it
            check_task_config(task, task_section(TASKS[task].defaults(), raw, f"finetune.{task}"))
    cfg = load_config("tiny", ["finetune.retrieval.train.objectives=[itm]", "finetune.ve.mask_regions=true"])
    check_task_config("retrieval", cfg.finetune["retrieval"])  # read: retrieval trains with these objectives
    check_task_config("ve", cfg.finetune["ve"])
    assert load_config("tiny").finetune["retrieval"].train.objectives == ["vsc", "itm"]

