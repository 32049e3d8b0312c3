"""Data-parallel training over several processes, on one machine or many: JAX's runtime and `keras.distribution`.

Every process runs the same `keras-cnn --backend jax train ... --distributed` (or `keras_cnn.train(...,
distribution=...)`); they join through JAX's coordination service on process 0 (`join`), exchange gradients with
gloo's all-reduce on CPUs, and train one model replicated in all of them under a `keras.distribution.DataParallel`.

- **Data.** Every process reads the data in the same seeded order and keeps its slice of each global batch: the
  cut of Keras's `DataParallel.distribute_dataset` (`rebatch` to `batch_size / processes`, `shard`), made here
  so the epoch's length stays known. A step trains on `batch_size` images in all, as on one process; the steps
  must be equal, so training drops an epoch's last partial batch and validation up to 2% of its images (`shard`).
- **The run folder.** Process 0 writes it. The others write the same files into a private temporary folder they
  delete at the end, so that every process runs the same steps; with `--resume` they first copy the run folder,
  which must be on a file system they all see (`open_run`).
- **Agreement.** Before training the processes compare their arguments and take process 0's measured precision;
  after it, their weights' checksums (`check_weights`).
- **Faults.** A process that dies breaks the others' next all-reduce: they stop with one line naming it
  (`ProcessLost`) within a second. JAX's runtime ends a process from C++ when it loses the coordinator (process
  0) or a process's heartbeats for `heartbeat_timeout` s; the command turns that into one line too
  (`keras_cnn.training.supervision`).
"""
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import zlib

from keras_cnn.utils import io

logger = logging.getLogger("keras_cnn")
JOIN_TIMEOUT = 60  # s: for every process to reach the coordinator and register (JAX's default: 300)
HEARTBEAT_TIMEOUT = 20  # s without a heartbeat before JAX declares a process dead (JAX's default: 100)
SHUTDOWN_TIMEOUT = 4 * 3600  # s the others wait at exit for process 0 to evaluate and write (JAX's: 300)
# Keras's variables for `keras.distribution.initialize`; JAX reads JAX_COORDINATOR_ADDRESS and detects SLURM,
# Open MPI, Kubernetes (JobSet) and Cloud TPU itself.
ENVIRONMENT = {"coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES", "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "process_id": "KERAS_DISTRIBUTION_PROCESS_ID"}
VALIDATION_DROP = 0.02  # of the validation images a larger (faster) validation batch may leave out


class ProcessLost(ConnectionError):
    """Another process of the run stopped (killed, crashed, its machine gone) while they trained together."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins the others (`--coordinator --num-processes --process-id`; None: JAX detects it),
    the seconds for every process to join, and the seconds without a heartbeat after which a process is lost."""

    coordinator: str = None
    num_processes: int = None
    process_id: int = None
    join_timeout: int = JOIN_TIMEOUT
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT

    def __post_init__(self):
        from keras_cnn.models import options

        if self.num_processes is not None:
            options.positive_int("num_processes", self.num_processes)
        if self.process_id is not None:
            options.positive_int("process_id", self.process_id, minimum=0)
            if self.num_processes is not None and self.process_id >= self.num_processes:
                options.fail(f"`process_id` counts from 0 to num_processes - 1 = {self.num_processes - 1}",
                             "process_id", self.process_id)
        options.positive_int("join_timeout", self.join_timeout)
        options.positive_int("heartbeat_timeout", self.heartbeat_timeout)
        if self.coordinator is not None:
            _host_and_port(self.coordinator)

    @classmethod
    def from_environment(cls, coordinator=None, num_processes=None, process_id=None, **timeouts):
        """The given values, else Keras's KERAS_DISTRIBUTION_* variables (the first of the job addresses is the
        coordinator); what is still None JAX detects."""
        def variable(name, convert):
            text = os.environ.get(ENVIRONMENT[name], "").strip()
            try:
                return convert(text) if text else None
            except ValueError:
                raise ValueError(f"{ENVIRONMENT[name]} must be an integer. Received: {ENVIRONMENT[name]}={text!r}")

        addresses = variable("coordinator", lambda text: text.split(","))
        count = num_processes if num_processes is not None else variable("num_processes", int)
        if coordinator is None and addresses:
            if count is not None and len(addresses) > 1 and len(addresses) != count:
                raise ValueError(f"{ENVIRONMENT['coordinator']} names {len(addresses)} processes, not "
                                 f"{count}. Received: {ENVIRONMENT['coordinator']}={','.join(addresses)!r}")
            coordinator = addresses[0].strip()
        return cls(coordinator, count, process_id if process_id is not None else variable("process_id", int),
                   **timeouts)


def _host_and_port(address):
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the coordinator is HOST:PORT, process 0's address and a free port on it (e.g. "
                         f"10.0.0.1:1234). Received: coordinator={address!r}")
    return host.strip("[]"), int(port)


def check_backend(backend, strategy=None):
    """One line unless `--distributed` can run: on the JAX backend, without a tf.distribute strategy."""
    if strategy is not None:
        raise ValueError("--distributed trains over processes with keras.distribution; --strategy is "
                         f"TensorFlow's, over one process's devices: use one of them. Received: strategy={strategy!r}")
    if backend != "jax":
        raise ValueError("--distributed trains with keras.distribution on the JAX backend: run `keras-cnn --backend "
                         "jax train ... --distributed` in every process, or on TensorFlow `--strategy mirrored` over "
                         f"one machine's devices. Received: backend={backend!r}")


@dataclasses.dataclass(repr=False)
class Processes:
    """The processes of this run, as this one sees them: the `keras.distribution` they train under, this
    process's index (0 writes the run folder), their count; the private folder of a process other than 0."""

    distribution: object
    index: int
    count: int
    scratch: str = None

    @property
    def is_chief(self):
        return self.index == 0

    def __repr__(self):
        return f"<process {self.index} of {self.count}>"


def is_chief(processes):
    """Whether this process writes the run folder: process 0, or the only one."""
    return processes is None or processes.is_chief


def join(call):
    """(None, `call`) for an ordinary run; else join the other processes (once per process) and return
    (`Processes`, `call` as this process trains it).

    `call` is the run's `TrainConfig`; its `distribution` is True (from the environment), a `DistributedConfig`
    (or its fields), or a `keras.distribution` set up by the caller. Processes other than 0 train quietly
    (`verbose` 0), and "auto" precision becomes process 0's choice.
    """
    spec = call.distribution
    if spec is None or spec is False:
        return None, call
    import keras

    check_backend(keras.backend.backend(), call.strategy)
    if hasattr(spec, "distribute_dataset") and hasattr(spec, "scope"):  # a keras.distribution (no public base)
        import jax

        spec.auto_shard_dataset = False  # `shard` cuts the data
        processes = Processes(spec, jax.process_index(), jax.process_count())
    else:
        config = (DistributedConfig.from_environment() if spec is True else
                  DistributedConfig(**spec) if isinstance(spec, dict) else spec)
        if not isinstance(config, DistributedConfig):
            raise TypeError("distribution is True, a DistributedConfig (or its fields as a dict) or a "
                             f"keras.distribution.Distribution. Received: distribution={spec!r}")
        count, index = initialize(config)
        devices = keras.distribution.list_devices()
        processes = Processes(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False), index, count)
    _check_run(call, processes)
    quiet = {} if processes.is_chief else {"verbose": 0}
    return processes, dataclasses.replace(call, precision=_agreed_precision(call, processes), **quiet)


def _check_run(call, processes):
    devices = _device_count()
    if processes.count > 1 and call.out is None:
        raise ValueError(f"a run over {processes.count} processes needs --out, the same run folder in every process "
                         "(process 0 writes it; the others need its name to resume). Received: out=None")
    if call.batch_size % devices:
        raise ValueError(f"the batch size must be a multiple of the {devices} devices of the processes: each step "
                         f"gives every device an equal slice. Received: batch_size={call.batch_size}")


_JOINED = {}  # the DistributedConfig this process joined with, and the processes' (count, index)


def initialize(config):
    """Join the other processes through JAX's coordination service (once per process): (count, index).

    Gloo carries the CPU collectives; a coordinator on a loopback address listens on that address only; a
    process other than 0 first waits for the coordinator to answer, so a wrong address or a missing process 0
    fails with one line within `join_timeout` seconds instead of JAX's abort.
    """
    import jax

    if _JOINED:
        if _JOINED["config"] != config:
            raise ValueError(f"this process already joined with {_JOINED['config']}. Received: distribution={config!r}")
        return _JOINED["processes"]
    if config.num_processes == 1:  # nothing to join: DataParallel over this process's devices
        _JOINED.update(config=config, processes=(1, 0))
        return 1, 0
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    started = time.monotonic()
    if config.coordinator is not None and config.process_id:
        _wait_for_coordinator(config)
    remaining = max(1, math.ceil(config.join_timeout - (time.monotonic() - started)))
    try:
        jax.distributed.initialize(config.coordinator, config.num_processes, config.process_id,
                                   initialization_timeout=remaining,
                                   heartbeat_timeout_seconds=config.heartbeat_timeout,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT,
                                   coordinator_bind_address=_bind_address(config.coordinator))
    except (ValueError, TypeError, RuntimeError) as error:
        hint = ("JAX computed before the processes joined: join first in the process" if "before any JAX" in
                str(error) else "process 0 listens on --coordinator: its port must be free and its address this "
                "machine's" if "RPC server" in str(error) else "give --coordinator, --num-processes and "
                "--process-id, or run under a launcher JAX detects (SLURM, Open MPI, Kubernetes)")
        raise ValueError(f"could not join the other processes ({' '.join(str(error).split())}): {hint}. "
                         f"Received: distribution={config!r}") from error
    _JOINED.update(config=config, processes=(jax.process_count(), jax.process_index()))
    return _JOINED["processes"]


def _bind_address(coordinator):
    """Where the coordinator listens: its loopback address, else JAX's choice (every interface, or its variable)."""
    host = _host_and_port(coordinator)[0] if coordinator else None
    try:
        return coordinator if host == "localhost" or ipaddress.ip_address(host).is_loopback else None
    except ValueError:  # a host name, or None
        return None


def _wait_for_coordinator(config):
    host, port = _host_and_port(config.coordinator)
    deadline = time.monotonic() + config.join_timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, config.join_timeout)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ValueError(f"process {config.process_id} could not reach the coordinator {config.coordinator} "
                                 f"within {config.join_timeout} s ({error.strerror or error}): start process 0 with "
                                 "the same --coordinator, or check the address, port and firewall. "
                                 f"Received: coordinator={config.coordinator!r}") from error
        time.sleep(0.5)


def _agreed_precision(call, processes):
    """"auto" precision measured in every process could differ; every process takes process 0's choice."""
    if processes.count == 1 or call.precision != "auto" or not isinstance(call.model, str):
        return call.precision
    import numpy as np
    from jax.experimental import multihost_utils

    from keras_cnn.training.precision import PRECISIONS, resolve_precision

    chosen = multihost_utils.broadcast_one_to_all(np.int32(PRECISIONS.index(resolve_precision("auto"))))
    return PRECISIONS[int(chosen)]


@contextlib.contextmanager
def scope(processes):
    """Build, compile and train under the processes' `keras.distribution`; a process that dies meanwhile raises
    `ProcessLost` in the others; the private folder of a process other than 0 is deleted on the way out."""
    if processes is None:
        yield
        return
    try:
        with processes.distribution.scope():
            yield
    except Exception as error:
        lost = _lost(error, processes)
        if lost is None:
            raise
        raise lost from error
    finally:
        if processes.scratch:
            shutil.rmtree(processes.scratch, ignore_errors=True)


LOST_CONNECTION = ("Connection reset by peer", "Connection closed by peer", "Connection refused", "Broken pipe",
                   "Socket closed")


def _lost(error, processes):
    """The `ProcessLost` that `error` means (gloo's peer went away in a collective: JAX or jax.numpy), or None."""
    text = " ".join(str(error).split())
    if not any(sign in text for sign in LOST_CONNECTION) or not (
            "Gloo" in text or type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError")):
        return None
    who, reason = (f"process {1 - processes.index}" if processes.count == 2 else "another process",
                   next(sign for sign in LOST_CONNECTION if sign in text))
    return ProcessLost(f"process {processes.index} of {processes.count} lost {who}: it stopped (killed, crashed or its "
                       f"machine went away) while they trained ({reason}). The run folder keeps every finished epoch: "
                       "start every process again with --resume")


def shard(processes, call, batches, data):
    """`batches` (`keras_cnn.training.batches.Batches`) as every process can split them into equal slices: the training
    epoch without its last partial batch, validation in batches of a multiple of the device count."""
    if processes is None:
        return batches
    devices = _device_count()
    steps = data.sizes["train"] // call.batch_size
    if not steps:
        raise ValueError(f"the training split ({data.sizes['train']} images) is smaller than one batch, which "
                         f"distributed training needs full. Received: batch_size={call.batch_size}")
    val = batches.val if data.sizes["val"] >= devices else None  # else the training accuracy is monitored
    if val is not None:
        size = validation_batch(data.sizes["val"], devices, max(call.batch_size, devices))
        val = _slices(val, size, data.sizes["val"] // size, processes)
    return batches._replace(train=_slices(batches.train, call.batch_size, steps, processes), val=val, steps=steps,
                            total=math.ceil(call.epochs * steps))


def _slices(dataset, size, count, processes):
    """This process's slice of each of the `count` full batches of `size` images in `dataset`."""
    import tensorflow as tf

    full = dataset.rebatch(size, drop_remainder=True)
    sliced = full.rebatch(size // processes.count).shard(processes.count, processes.index)
    return sliced.apply(tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)


def _device_count():
    import keras

    return len(keras.distribution.list_devices())


def validation_batch(images, devices, largest):
    """The validation batch size: a multiple of `devices` up to `largest`, the largest that leaves out no more
    than `VALIDATION_DROP` of the `images` (and at least fewer than `devices`)."""
    allowed = max(images % devices, int(images * VALIDATION_DROP))
    sizes = [size for size in range(devices, largest + 1, devices) if images % size <= allowed and size <= images]
    return max(sizes, default=devices)


def open_run(processes, call, opener):
    """The run folder, opened by `opener(call)` (the trainer's: new, or the interrupted run with --resume) in
    process 0; the other processes open a private copy (`_private_run`). Then every process checks that all opened
    theirs and were given the same training arguments, and all stop with one line if not."""
    if processes is None:
        return opener(call)
    run, failure = None, None
    try:
        run = opener(call) if processes.is_chief else _private_run(processes, call, opener)
    except Exception as error:  # noqa: BLE001 (re-raised once the others know)
        failure = error
    statuses = _gathered([int(failure is not None), fingerprint(call)], processes)
    if failure is not None:
        raise failure
    failed = [index for index, (status, _) in enumerate(statuses) if status]
    different = [index for index, (_, print_) in enumerate(statuses) if print_ != statuses[0][1]]
    if (failed or different) and processes.is_chief and not call.resume:
        shutil.rmtree(run.path, ignore_errors=True)  # the new run folder of a run that will not train
    if failed:
        raise ValueError(f"process {failed[0]} could not open its run folder (its own output says why), so no "
                         f"process trains. Received: out={call.out!r}")
    if different:
        raise ValueError(f"process {different[0]} was started with other training arguments than process 0: every "
                         "process runs the same command (only --process-id differs), or they would train different "
                         f"models. Received: out={call.out!r}")
    return run


def _private_run(processes, call, opener):
    """The run folder of a process other than 0: a temporary folder, a copy of the real one when resuming."""
    out = call.out
    if call.resume and not os.path.isfile(os.path.join(out, io.CONFIG_FILE)):
        raise ValueError(f"process {processes.index} cannot read {out}/{io.CONFIG_FILE}: with --resume every process "
                         "reads the run folder's backup, so --out must be on a file system every process sees (the "
                         f"same machine, or a shared mount). Received: out={out!r}")
    _remove_abandoned()
    processes.scratch = tempfile.mkdtemp(prefix=f"{SCRATCH}{processes.index}-{os.getpid()}-")
    if call.resume:
        shutil.copytree(out, processes.scratch, dirs_exist_ok=True,
                        ignore=lambda folder, names: [name for name in names if io.is_temporary(name)])
    return opener(dataclasses.replace(call, out=processes.scratch))


SCRATCH = "keras-cnn-process"  # the private folders' names: SCRATCH<index>-<pid>-<random>, in the temporary folder


def _remove_abandoned():
    """Delete the private folders of killed processes (whose process id is gone): nothing else removes them."""
    folder = tempfile.gettempdir()
    for name in os.listdir(folder):
        parts = name[len(SCRATCH):].split("-") if name.startswith(SCRATCH) else []
        if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True


def fingerprint(call):
    """A checksum of the training arguments that must be equal in every process."""
    skip = ("distribution", "verbose", "callbacks", "out")
    values = {field.name: getattr(call, field.name) for field in dataclasses.fields(call) if field.name not in skip}
    text = json.dumps(io.jsonable(values, other=lambda value: getattr(value, "name", type(value).__name__)),
                      sort_keys=True)
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def check_weights(processes, model):
    """After training, every process must hold the same weights: log their checksum (crc32 of every weight's
    bytes, process by process), or stop every process with one line if they differ."""
    if processes is None or processes.count == 1:
        return
    import numpy as np

    checksum = 0
    for weight in model.weights:
        checksum = zlib.crc32(np.ascontiguousarray(weight.numpy()).tobytes(), checksum)
    checksums = [high << 16 | low for high, low in _gathered([checksum >> 16, checksum & 0xFFFF], processes)]
    if len(set(checksums)) > 1:
        listed = ", ".join(f"{value:08x}" for value in checksums)
        raise ValueError(f"the processes' weights differ after training (checksums {listed}): a process computed "
                         f"differently (another Keras or JAX version?). Received: distribution={processes!r}")
    logger.info("process %d of %d: weights identical in every process (checksum %08x)", processes.index,
                processes.count, checksum)


def _gathered(values, processes):
    """Every process's `values` (a list of ints), in process order."""
    if processes.count == 1:
        return [list(values)]
    import numpy as np
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(np.asarray(values, np.int32)).reshape(processes.count, -1).tolist()

