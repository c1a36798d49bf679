"""Tests for continual.measure.metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from numerics import sum_rounding
from continual.measure.metrics import (
    accuracy_on_seen,
    format_summary,
    load_matrix_csv,
    matrix_layout,
    performance_drop,
    retention,
    retrieval_metrics,
    summarize,
)

# (T+1) x T with T = 3. Row 0 = zero-shot, rows 1..3 = after sessions 1..3.
# Column 1 goes 50 -> 80 -> 60 (up then down); R[0, 1] = 95 must NOT enter the max.
R_FULL = np.array(
    [
        [95.0, 20.0, 30.0],  # before training
        [50.0, 40.0, 35.0],  # after session 1
        [80.0, 70.0, 55.0],  # after session 2
        [60.0, 65.0, 90.0],  # after session 3
    ]
)

KEYS = {"avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "pd", "transfer", "avg", "last"}


def approx(x):
    """float64 means, sums and differences of at most a few dozen percentages (<= 100): within
    n eps of 100 (n = 64 operations, generously)."""
    return pytest.approx(x, abs=sum_rounding(64, 100.0, torch.float64))


def assert_metrics(got, expected):
    assert set(got) == KEYS
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == approx(value), key


# --------------------------------------------------------------------------- #
# Matrix metrics, full matrix
# --------------------------------------------------------------------------- #
EXPECTED_FULL = {
    # row 3, j <= 3: (60 + 65 + 90) / 3 = 215/3
    "avg_acc": 215 / 3,
    # acc_seen = 50, (80+70)/2 = 75, 215/3 -> (50 + 75 + 215/3) / 3 = 590/9
    "avg_inc_acc": 590 / 9,
    # j=1: max(R11=50, R21=80) - R31=60 = 20 (not 50-60=-10, not 95-60=35)
    # j=2: max(R22=70) - R32=65 = 5  -> (20 + 5) / 2
    "forgetting": 12.5,
    # j=1: 60 - 50 = 10; j=2: 65 - 70 = -5 -> 5/2
    "bwt": 2.5,
    # j=2: R12 - R02 = 40 - 20 = 20; j=3: R23 - R03 = 55 - 30 = 25 -> 22.5
    "fwt": 22.5,
    # acc_seen(1) - acc_seen(3) = 50 - 215/3 = -65/3
    "pd": -65 / 3,
    # rows 1..3 only. j=2: mean(R12)=40; j=3: mean(R13, R23)=(35+55)/2=45 -> 42.5
    "transfer": 42.5,
    # column means (50+80+60)/3, (40+70+65)/3, (35+55+90)/3 -> (190+175+180)/9
    "avg": 545 / 9,
    # mean of row 3 over all T columns
    "last": 215 / 3,
}


def test_summarize_full_matrix_with_initial_row():
    assert_metrics(summarize(R_FULL), EXPECTED_FULL)


def test_summarize_t_by_t_matrix_has_no_fwt():
    # same sessions without row 0: everything identical except fwt, which needs row 0
    expected = dict(EXPECTED_FULL, fwt=float("nan"))
    assert_metrics(summarize(R_FULL[1:], initial_row=False), expected)


def test_accuracy_on_seen_equal_weights():
    np.testing.assert_allclose(accuracy_on_seen(R_FULL), [50.0, 75.0, 215 / 3])
    np.testing.assert_allclose(accuracy_on_seen(R_FULL[1:], initial_row=False), [50.0, 75.0, 215 / 3])


def test_weighted_avg_inc_acc_and_pd():
    w = [1, 3, 6]
    # acc_seen(1) = 50
    # acc_seen(2) = (1*80 + 3*70) / 4 = 290/4 = 72.5
    # acc_seen(3) = (1*60 + 3*65 + 6*90) / 10 = (60 + 195 + 540)/10 = 79.5
    np.testing.assert_allclose(accuracy_on_seen(R_FULL, weights=w), [50.0, 72.5, 79.5])
    got = summarize(R_FULL, weights=w)
    assert got["avg_inc_acc"] == approx((50 + 72.5 + 79.5) / 3)  # 202/3
    assert got["pd"] == approx(50 - 79.5)
    assert performance_drop(R_FULL, weights=w) == approx(-29.5)
    # avg_acc stays the plain mean of row k
    assert got["avg_acc"] == approx(215 / 3)


def test_weights_wrong_length():
    with pytest.raises(ValueError, match="weights"):
        summarize(R_FULL, weights=[1, 2])


def test_performance_drop_positive_when_accuracy_falls():
    # acc_seen(1) = 90, acc_seen(2) = (70 + 50) / 2 = 60 -> PD = 30
    R = np.array([[90.0, 10.0], [70.0, 50.0]])
    assert performance_drop(R, initial_row=False) == approx(30.0)
    assert performance_drop(R_FULL) == approx(-65 / 3)


# --------------------------------------------------------------------------- #
# Partial matrices (runner calls summarize after every session)
# --------------------------------------------------------------------------- #
def test_partial_after_session_1():
    got = summarize(R_FULL[:2])  # rows 0 and 1, T = 3 columns
    assert_metrics(
        got,
        {
            "avg_acc": 50.0,
            "avg_inc_acc": 50.0,
            "forgetting": float("nan"),  # no earlier session
            "bwt": float("nan"),
            # j = 2..min(k+1, T) = 2: R12 - R02 = 40 - 20
            "fwt": 20.0,
            "pd": 0.0,
            # j=2: rows 1..min(1,1) -> 40; j=3: rows 1..min(2,1) -> 35; (40+35)/2
            "transfer": 37.5,
            # only row 1: (50+40+35)/3
            "avg": 125 / 3,
            "last": 125 / 3,
        },
    )


def test_partial_after_session_2():
    got = summarize(R_FULL[:3])  # rows 0..2
    assert_metrics(
        got,
        {
            "avg_acc": 75.0,  # (80 + 70) / 2
            "avg_inc_acc": 62.5,  # (50 + 75) / 2
            "forgetting": -30.0,  # j=1: max(R11=50) - R21=80
            "bwt": 30.0,  # R21 - R11 = 80 - 50
            # j=2: 40-20 = 20; j=3 (= k+1, future column): R23 - R03 = 55-30 = 25
            "fwt": 22.5,
            "pd": -25.0,  # 50 - 75
            # j=2: R12 = 40; j=3: (R13 + R23)/2 = (35+55)/2 = 45
            "transfer": 42.5,
            # column means over rows 1..2: 65, 55, 45
            "avg": 55.0,
            "last": 205 / 3,  # (80 + 70 + 55) / 3
        },
    )
    # same rows without row 0
    got_no0 = summarize(R_FULL[1:3], initial_row=False)
    assert math.isnan(got_no0["fwt"])
    assert got_no0["forgetting"] == approx(-30.0)
    assert got_no0["transfer"] == approx(42.5)


def test_only_initial_row_gives_nan():
    got = summarize(R_FULL[:1])
    assert set(got) == KEYS
    assert all(math.isnan(v) for v in got.values())
    assert len(accuracy_on_seen(R_FULL[:1])) == 0


def test_too_many_rows():
    with pytest.raises(ValueError, match="5 x 3"):
        summarize(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="4 x 3"):
        summarize(np.zeros((4, 3)), initial_row=False)


def test_mtil_3x3():
    # ZSCL MTIL table on a T x T matrix (rows = after sessions 1..3)
    R = np.array(
        [
            [80.0, 30.0, 20.0],
            [70.0, 85.0, 40.0],
            [60.0, 75.0, 90.0],
        ]
    )
    got = summarize(R, initial_row=False)
    # transfer: j=2: R12 = 30; j=3: (R13 + R23)/2 = (20 + 40)/2 = 30 -> 30
    assert got["transfer"] == approx(30.0)
    # avg: columns (80+70+60)/3=70, (30+85+75)/3=190/3, (20+40+90)/3=50 -> (70 + 190/3 + 50)/3
    assert got["avg"] == approx((70 + 190 / 3 + 50) / 3)
    # last: (60 + 75 + 90)/3 = 75
    assert got["last"] == approx(75.0)
    # forgetting: j=1: max(80,70) - 60 = 20; j=2: 85 - 75 = 10 -> 15
    assert got["forgetting"] == approx(15.0)
    # bwt: (60-80 + 75-85)/2 = -15
    assert got["bwt"] == approx(-15.0)


# --------------------------------------------------------------------------- #
# retention, layout, formatting
# --------------------------------------------------------------------------- #
def test_retention():
    assert retention(30.0, 40.0) == {"absolute": 30.0, "relative": 0.75}
    r = retention(5.0, 0.0)
    assert r["absolute"] == 5.0 and math.isnan(r["relative"])


def test_matrix_layout():
    assert matrix_layout(np.zeros((3, 3))) is False
    assert matrix_layout(np.zeros((4, 3))) is True
    with pytest.raises(ValueError) as e:
        matrix_layout(np.zeros((3, 5)))
    assert str(e.value) == (
        "matrix is 3 x 5: expected T x T (rows after sessions 1..T) "
        "or (T+1) x T (first row = before training)"
    )
    with pytest.raises(ValueError, match="matrix is 5 x 3"):
        matrix_layout(np.zeros((5, 3)))
    with pytest.raises(ValueError):
        matrix_layout(np.zeros(3))


def test_format_summary():
    text = format_summary({"avg_acc": 71.6667, "forgetting": float("nan"), "bwt": -5.0})
    assert text.splitlines() == [
        "avg_acc     71.67",
        "forgetting      -",
        "bwt         -5.00",
    ]


# --------------------------------------------------------------------------- #
# CSV loading
# --------------------------------------------------------------------------- #
def write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_plain(tmp_path):
    m = load_matrix_csv(write(tmp_path, "0.1,0.2\n0.3,0.4\n\n"))
    np.testing.assert_array_equal(m, [[0.1, 0.2], [0.3, 0.4]])


def test_csv_header_and_labels(tmp_path):
    text = "after,s1,s2\nbefore,1,2\nsession 1,3,4\nsession 2, 5 ,6\n"
    m = load_matrix_csv(write(tmp_path, text))
    np.testing.assert_array_equal(m, [[1, 2], [3, 4], [5, 6]])
    assert matrix_layout(m) is True


def test_csv_header_only(tmp_path):
    m = load_matrix_csv(write(tmp_path, "s1,s2\n1,2\n3,4\n"))
    np.testing.assert_array_equal(m, [[1, 2], [3, 4]])


def test_csv_labels_only(tmp_path):
    m = load_matrix_csv(write(tmp_path, "a,1,2\nb,3,4\n"))
    np.testing.assert_array_equal(m, [[1, 2], [3, 4]])


def test_csv_header_naming_label_column(tmp_path):
    # header with a name over a numeric first column: header, no labels
    m = load_matrix_csv(write(tmp_path, "x,1,2\n5,1,2\n6,3,4\n"))
    np.testing.assert_array_equal(m, [[5, 1, 2], [6, 3, 4]])
    # ambiguous: "session,1,2" above a label column is read as a labelled data row
    m = load_matrix_csv(write(tmp_path, "session,1,2\nbefore,3,4\n"))
    np.testing.assert_array_equal(m, [[1, 2], [3, 4]])


def test_csv_pandas_index(tmp_path):
    # pandas to_csv: empty top-left header cell and a numeric index column
    m = load_matrix_csv(write(tmp_path, ",0,1\n0,1,2\n1,3,4\n"))
    np.testing.assert_array_equal(m, [[1, 2], [3, 4]])


def test_csv_errors(tmp_path):
    p = write(tmp_path, "", "empty.csv")
    with pytest.raises(ValueError, match=r"empty\.csv.*empty"):
        load_matrix_csv(p)

    p = write(tmp_path, "s1,s2\n", "header.csv")
    with pytest.raises(ValueError, match=r"header\.csv"):
        load_matrix_csv(p)

    p = write(tmp_path, "1,2,3\n4,5\n", "ragged.csv")
    with pytest.raises(ValueError, match=r"ragged\.csv: non-rectangular, line 2 has 2 cells, expected 3"):
        load_matrix_csv(p)

    p = write(tmp_path, "s1,s2\n1,2\n3,abc\n", "bad.csv")
    with pytest.raises(ValueError, match=r"bad\.csv: non-numeric cell 'abc' at line 3, column 2"):
        load_matrix_csv(p)

    # a first column that is only partly non-numeric is an error, not a label column
    p = write(tmp_path, "1,2\nx,4\n", "mixed.csv")
    with pytest.raises(ValueError, match=r"mixed\.csv: non-numeric cell 'x' at line 2, column 1"):
        load_matrix_csv(p)


# --------------------------------------------------------------------------- #
# Retrieval
# --------------------------------------------------------------------------- #
# 3 images, 4 captions; captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2
SIM = np.array(
    [
        # c0   c1   c2   c3
        [0.2, 0.9, 0.5, 0.1],  # img0
        [0.8, 0.1, 0.3, 0.7],  # img1
        [0.4, 0.6, 0.4, 0.6],  # img2
    ]
)
CAPTION_IMAGE = np.array([0, 0, 1, 2])


def test_retrieval_multi_caption_hand_computed():
    got = retrieval_metrics(SIM, CAPTION_IMAGE, ks=(1, 2, 3))
    # i2t (rank of best own caption among the other images' captions; ties count against):
    #   img0: best own = c1 0.9, nothing else >= 0.9           -> 1  (c0 alone would be rank 3)
    #   img1: own c2 0.3, beaten by c0 0.8, c3 0.7              -> 3
    #   img2: own c3 0.6, tied with c1 0.6 (counts against)     -> 2
    # ranks [1, 3, 2]: R@1 = 1/3, R@2 = 2/3, R@3 = 3/3, median 2
    assert got["i2t_r1"] == approx(100 / 3)
    assert got["i2t_r2"] == approx(200 / 3)
    assert got["i2t_r3"] == approx(100.0)
    assert got["i2t_median_rank"] == approx(2.0)
    # t2i (per caption, rank of its image in its column):
    #   c0 col [0.2, 0.8, 0.4], img0 -> 3
    #   c1 col [0.9, 0.1, 0.6], img0 -> 1
    #   c2 col [0.5, 0.3, 0.4], img1 -> 3
    #   c3 col [0.1, 0.7, 0.6], img2 -> 2
    # ranks [3, 1, 3, 2]: R@1 = 1/4, R@2 = 2/4, R@3 = 4/4, median 2.5
    assert got["t2i_r1"] == approx(25.0)
    assert got["t2i_r2"] == approx(50.0)
    assert got["t2i_r3"] == approx(100.0)
    assert got["t2i_median_rank"] == approx(2.5)


def test_retrieval_default_keys():
    got = retrieval_metrics(SIM, CAPTION_IMAGE)
    assert set(got) == {
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
        "i2t_median_rank", "t2i_median_rank",
    }
    assert got["i2t_r1"] == approx(100 / 3)
    assert got["t2i_r1"] == approx(25.0)
    assert got["i2t_r5"] == approx(100.0)  # only 4 captions: every rank <= 4


def test_retrieval_r5_vs_r10():
    # 7 images, one caption each (caption c -> image c). Column c: images i < c score 1,
    # image c scores 0.5, images i > c score 0 -> t2i rank(c) = c + 1 = 1..7.
    n = 7
    i, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    sim = np.where(i < c, 1.0, 0.0)
    sim[np.arange(n), np.arange(n)] = 0.5
    got = retrieval_metrics(sim, np.arange(n))
    # t2i ranks 1..7: R@1 = 1/7, R@5 = 5/7, R@10 = 7/7, median 4
    assert got["t2i_r1"] == approx(100 / 7)
    assert got["t2i_r5"] == approx(500 / 7)
    assert got["t2i_r10"] == approx(100.0)
    assert got["t2i_median_rank"] == approx(4.0)
    # i2t: row i, own caption 0.5, beaten by captions c > i (score 1) -> rank 7 - i = 7..1
    assert got["i2t_r5"] == approx(500 / 7)
    assert got["i2t_median_rank"] == approx(4.0)


def test_retrieval_image_without_caption():
    # image 3 has no caption: skipped for i2t, but still a candidate for t2i
    # and its score for c1 ties image 0's 0.9 (t2i tie counts against the caption)
    sim = np.vstack([SIM, [0.0, 0.9, 0.0, 0.0]])
    got = retrieval_metrics(sim, CAPTION_IMAGE, ks=(1,))
    assert got["i2t_r1"] == approx(100 / 3)  # same 3 queries as before
    # c1 now ties with image 3 -> rank 2: t2i ranks [3, 2, 3, 2] -> R@1 = 0
    assert got["t2i_r1"] == approx(0.0)
    assert got["t2i_median_rank"] == approx(2.5)


def test_retrieval_bad_input():
    with pytest.raises(ValueError):
        retrieval_metrics(SIM, np.array([0, 0, 1]))
    with pytest.raises(ValueError):
        retrieval_metrics(SIM, np.array([0, 0, 1, 3]))
