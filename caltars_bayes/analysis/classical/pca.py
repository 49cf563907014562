"""Principal components of the item correlation matrix, varimax-rotated.

The solution that the founding studies of the observer-rated alliance scales
used, printed beside the model's factor structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from caltars_bayes._core.errors import DataError

# ---------------------------------------------------------------------------
# Principal components with varimax rotation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAResult:
    """Principal components of an item correlation matrix.

    Attributes
    ----------
    loadings : pandas.DataFrame
        Items x components (``"PC1"`` .. ``"PCn"``): rotated loadings when
        rotation was asked for, otherwise the unrotated ones.
    unrotated_loadings : pandas.DataFrame
        Items x components: eigenvectors times the square roots of their
        eigenvalues, each column's sign chosen so that it sums positive.
    eigenvalues : pandas.Series
        All eigenvalues of the correlation matrix, largest first, indexed
        ``"PC1"`` .. ``"PCp"``.
    variance_explained : pandas.DataFrame
        One row per retained component with columns ``component``,
        ``ss_loadings`` (sum of squared loadings), ``proportion``
        (``ss_loadings`` over the number of items) and ``cumulative``.
    rotation : numpy.ndarray
        Orthogonal ``n x n`` matrix with
        ``loadings = unrotated_loadings @ rotation`` (the identity when not
        rotated).
    n_obs : int
        Rows (complete cases) the correlations were computed from.
    """

    loadings: pd.DataFrame
    unrotated_loadings: pd.DataFrame
    eigenvalues: pd.Series
    variance_explained: pd.DataFrame
    rotation: np.ndarray
    n_obs: int


def _varimax(x: np.ndarray, normalize: bool = True, eps: float = 1e-5) -> np.ndarray:
    """Varimax rotation matrix, the algorithm of R's ``stats::varimax``."""
    p, nc = x.shape
    if nc < 2:
        return np.eye(nc)
    if normalize:
        sc = np.sqrt(np.sum(x**2, axis=1))
        sc[sc == 0] = 1.0
        x = x / sc[:, None]
    rot = np.eye(nc)
    d = 0.0
    for _ in range(1000):
        z = x @ rot
        b = x.T @ (z**3 - z * (np.sum(z**2, axis=0) / p))
        u, s, vt = np.linalg.svd(b)
        rot = u @ vt
        d_past, d = d, float(np.sum(s))
        if d < d_past * (1 + eps):
            break
    return rot


def _names(n: int) -> list[str]:
    return [f"PC{i + 1}" for i in range(n)]


def pca_varimax(X: pd.DataFrame, n_components: int, rotate: bool = True) -> PCAResult:
    """Principal components of the items' correlation matrix, varimax-rotated.

    Parameters
    ----------
    X : pandas.DataFrame
        Observations x items (numeric).  Rows with any missing item are
        dropped (complete cases) so that the correlation matrix is a proper
        correlation matrix.
    n_components : int
        Number of components to retain (1 .. number of items).
    rotate : bool, default True
        Varimax-rotate the retained components.

    Returns
    -------
    PCAResult
        ``loadings`` (items x ``PC1``..``PCn``), ``unrotated_loadings``,
        ``eigenvalues`` (Series, all components), ``variance_explained``
        (columns ``component``, ``ss_loadings``, ``proportion``,
        ``cumulative``), ``rotation`` (matrix) and ``n_obs``.

    Notes
    -----
    The Pearson correlation matrix of the items is eigen-decomposed; the
    unrotated loadings of a component are its eigenvector times the square
    root of its eigenvalue, so an item's loading is its correlation with the
    component.  The first ``n_components`` are kept and rotated by varimax
    with Kaiser normalisation (each item's loadings scaled to unit length
    before rotating and scaled back afterwards; R's ``stats::varimax`` with
    ``normalize = TRUE, eps = 1e-5``), which maximises the summed variance
    of the squared loadings within each component, pushing loadings towards
    0 or +/-1.  Afterwards each component's sign is chosen so that its
    loadings sum positive and the components are ordered by the variance
    they explain (sum of squared loadings) after rotation.  Rotation leaves
    each item's communality (row sum of squared loadings) unchanged.
    """
    if not isinstance(X, pd.DataFrame):
        X = pd.DataFrame(X)
    try:
        data = X.apply(pd.to_numeric, errors="raise").astype(float)
    except (TypeError, ValueError):
        raise DataError("<data frame>: PCA needs numeric item columns") from None
    data = data.dropna(axis=0, how="any")
    p = data.shape[1]
    if p < 2:
        raise DataError("<data frame>: PCA needs at least 2 item columns")
    if not 1 <= n_components <= p:
        raise ValueError(f"n_components must be between 1 and {p}, got {n_components}")
    if len(data) < 3:
        raise DataError(f"<data frame>: PCA needs at least 3 complete rows, got {len(data)}")
    sd = data.std(axis=0, ddof=1)
    flat = [str(c) for c in sd.index[~(sd > 0)]]
    if flat:
        raise DataError(f"<data frame>, column '{flat[0]}': item has no variance")
    corr = np.corrcoef(data.to_numpy(), rowvar=False)
    evals, evecs = np.linalg.eigh(corr)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    m = n_components
    load0 = evecs[:, :m] * np.sqrt(np.clip(evals[:m], 0.0, None))
    signs0 = np.where(load0.sum(axis=0) < 0, -1.0, 1.0)
    load0 = load0 * signs0
    if rotate and m > 1:
        rot = _varimax(load0)
        load = load0 @ rot
        signs = np.where(load.sum(axis=0) < 0, -1.0, 1.0)
        rot = rot * signs
        ss = np.sum((load0 @ rot) ** 2, axis=0)
        order_r = np.argsort(-ss, kind="stable")
        rot = rot[:, order_r]
    else:
        rot = np.eye(m)
    load = load0 @ rot
    names = _names(m)
    items = list(data.columns)
    ss = np.sum(load**2, axis=0)
    prop = ss / p
    ve = pd.DataFrame(
        {
            "component": names,
            "ss_loadings": ss,
            "proportion": prop,
            "cumulative": np.cumsum(prop),
        }
    )
    return PCAResult(
        loadings=pd.DataFrame(load, index=items, columns=names),
        unrotated_loadings=pd.DataFrame(load0, index=items, columns=names),
        eigenvalues=pd.Series(evals, index=_names(p), name="eigenvalue"),
        variance_explained=ve,
        rotation=rot,
        n_obs=len(data),
    )
