"""Pareto maths for a search with several objectives: pure functions of plain numbers, no TensorFlow.

A trial's vector holds one value per objective (accuracy of the shipped file, its size, its latency,
MACs, parameters), each with a direction, "max" or "min". One vector dominates another when it is at
least as good in every objective and better in one; the front is the set no vector dominates. Equal
vectors do not dominate each other, so duplicates are on the front together.

`tchebycheff` is ParEGO's scalarisation (Knowles 2006): each objective scaled to [0, 1] over the trials
seen so far (0 the best), then max_i(w_i * f_i) + rho * sum_i(w_i * f_i), lower is better. With a new
random weight vector for every proposal, a single-objective optimiser that minimises it is pulled
towards a different part of the front each time; the max term reaches concave parts of the front
that a weighted sum cannot.
"""
from keras_cnn.models.options import OBJECTIVES

# objective -> (the trial metric it reads, its direction)
METRICS = {
    "accuracy": ("ship_accuracy", "max"),
    "kb": ("ship_kb", "min"),
    "latency": ("ship_latency_ms", "min"),
    "macs": ("macs", "min"),
    "params": ("params", "min"),
}
assert tuple(METRICS) == OBJECTIVES
RHO = 0.05  # ParEGO's weight of the sum term: breaks ties between weakly dominated points


def parse(objectives):
    """The objectives as a tuple of names, from "accuracy,kb" or a sequence; ValueError on unknown or repeated ones."""
    names = tuple(part.strip() for part in objectives.split(",")) if isinstance(objectives, str) else \
        tuple(objectives)
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"`objectives` must be names among {', '.join(METRICS)}, comma-separated. "
                         f"Received: objectives={','.join(map(str, names))!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"`objectives` names an objective twice. Received: objectives={','.join(names)!r}")
    return names


def directions(objectives):
    return [METRICS[name][1] for name in objectives]


def vector(metrics, objectives):
    """A trial's vector from its metrics {metric name: value}; None if one of them is missing."""
    values = [metrics.get(METRICS[name][0]) for name in objectives]
    return None if any(value is None for value in values) else values


def dominates(a, b, directions):
    """True when `a` is at least as good as `b` in every objective and strictly better in one."""
    better = False
    for x, y, direction in zip(a, b, directions):
        if (x < y if direction == "max" else x > y):
            return False
        better = better or x != y
    return better


def front(vectors, directions):
    """Indices of the non-dominated vectors, in input order (quadratic: searches have tens of trials)."""
    return [i for i, a in enumerate(vectors)
            if not any(dominates(b, a, directions) for j, b in enumerate(vectors) if j != i)]


def tchebycheff(vectors, directions, weights, rho=RHO):
    """ParEGO's augmented Tchebycheff value of each vector under `weights` (lower is better)."""
    columns = list(zip(*vectors))
    scaled = []
    for values, direction in zip(columns, directions):
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        scaled.append([(high - v) / span if direction == "max" else (v - low) / span for v in values])
    rows = list(zip(*scaled))
    return [max(w * f for w, f in zip(weights, row)) + rho * sum(w * f for w, f in zip(weights, row))
            for row in rows]


def hypervolume(vectors, directions, reference):
    """The volume of objective space the vectors dominate, bounded by `reference` (a worse-than-all vector):
    one number per front, larger when a front is better anywhere, for comparing two searches' fronts.
    Exact, slicing along the last objective (fine for the tens of points a search has)."""
    flip = [-1 if direction == "max" else 1 for direction in directions]  # every objective minimised
    bound = [r * f for r, f in zip(reference, flip)]
    points = [[v * f for v, f in zip(vector, flip)] for vector in vectors]
    return _volume([p for p in points if all(x < b for x, b in zip(p, bound))], bound)


def _volume(points, bound):
    if not points:
        return 0.0
    if len(bound) == 1:
        return bound[0] - min(point[0] for point in points)
    points = sorted(points, key=lambda point: point[-1])
    total = 0.0
    for i, point in enumerate(points):
        upper = points[i + 1][-1] if i + 1 < len(points) else bound[-1]
        if upper > point[-1]:  # the slab up to the next point is dominated by the first i + 1 points
            total += (upper - point[-1]) * _volume([p[:-1] for p in points[:i + 1]], bound[:-1])
    return total
