//! Transcripts (the normalized answers a scenario got, step by step) and their comparison:
//! etcd's transcript, corrected by the list of expected differences, must equal Coffer's; on a
//! mismatch the report shows the first differing step in full with a line diff, then the labels
//! of every other differing step.

use serde_json::Value;

/// One request and its normalized answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// A name unique within its scenario (expected differences refer to it).
    pub label: String,
    /// What was sent.
    pub request: Value,
    /// What came back (or `{"error": ...}`).
    pub answer: Value,
}

/// Everything a scenario saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    /// The steps in order.
    pub steps: Vec<Step>,
}

/// A place where etcd 3.4.23 answers differently from etcd 3.5 (which Coffer implements), or
/// where Coffer differs on something no client depends on.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedDifference {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The step's label.
    pub step: &'static str,
    /// The upstream issue or PR (e.g. `etcd-io/etcd#15220`), or why there is none.
    pub issue: &'static str,
    /// What differs and why it is acceptable.
    pub why: &'static str,
    /// Turns etcd 3.4.23's answer into the answer expected from Coffer.
    pub expected_from_etcd: fn(&mut Value),
}

/// Applies the expected differences for `scenario` to etcd's transcript. Errors if one of them
/// no longer changes anything (the list must stay true).
pub fn apply_expected(
    scenario: &str,
    etcd: &Transcript,
    expected: &[ExpectedDifference],
) -> Result<Transcript, String> {
    let mut out = etcd.clone();
    for d in expected.iter().filter(|d| d.scenario == scenario) {
        let Some(step) = out.steps.iter_mut().find(|s| s.label == d.step) else {
            return Err(format!(
                "expected difference for step {:?} of scenario {scenario:?} ({}) names a step \
                 the scenario does not have",
                d.step, d.issue
            ));
        };
        let before = step.answer.clone();
        (d.expected_from_etcd)(&mut step.answer);
        if step.answer == before {
            return Err(format!(
                "expected difference {} ({}) at step {:?} of scenario {scenario:?} is no longer \
                 observed on etcd: etcd answered {}",
                d.issue,
                d.why,
                d.step,
                pretty(&before)
            ));
        }
    }
    Ok(out)
}

/// Compares two transcripts; `Err` holds a readable report of every differing step.
pub fn compare(
    scenario: &str,
    left_name: &str,
    left: &Transcript,
    right_name: &str,
    right: &Transcript,
) -> Result<(), String> {
    let mut report = String::new();
    let mut others = Vec::new();
    let n = left.steps.len().max(right.steps.len());
    for i in 0..n {
        match (left.steps.get(i), right.steps.get(i)) {
            (Some(l), Some(r)) if l == r => {}
            (Some(l), Some(r)) => {
                if report.is_empty() {
                    report = step_report(scenario, i, left_name, l, right_name, r);
                } else {
                    others.push(format!("#{i} {}", l.label));
                }
            }
            (Some(s), None) | (None, Some(s)) => {
                if report.is_empty() {
                    report = format!(
                        "scenario {scenario:?}: transcripts differ in length ({left_name} {}, \
                         {right_name} {}); step #{i} {:?} is missing on one side",
                        left.steps.len(),
                        right.steps.len(),
                        s.label
                    );
                } else {
                    others.push(format!("#{i} {} (missing on one side)", s.label));
                }
            }
            (None, None) => {}
        }
    }
    if report.is_empty() {
        return Ok(());
    }
    if !others.is_empty() {
        report.push_str(&format!(
            "\nother differing steps ({}): {}\n",
            others.len(),
            others.join(", ")
        ));
    }
    Err(report)
}

fn step_report(
    scenario: &str,
    i: usize,
    left_name: &str,
    l: &Step,
    right_name: &str,
    r: &Step,
) -> String {
    let mut s = format!(
        "scenario {scenario:?}: first difference at step #{i} {:?}\nrequest: {}\n",
        l.label,
        pretty(&l.request)
    );
    if l.label != r.label || l.request != r.request {
        s.push_str(&format!(
            "(the other side's step is {:?} with request {})\n",
            r.label,
            pretty(&r.request)
        ));
    }
    s.push_str(&format!(
        "--- {left_name}\n+++ {right_name}\n{}",
        line_diff(&pretty(&l.answer), &pretty(&r.answer))
    ));
    s
}

/// Pretty JSON.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A unified-style line diff (longest common subsequence; inputs are small).
pub fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(answers: &[Value]) -> Transcript {
        Transcript {
            steps: answers
                .iter()
                .enumerate()
                .map(|(i, a)| Step {
                    label: format!("s{i}"),
                    request: json!({}),
                    answer: a.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn equal_transcripts_compare_ok() {
        let a = t(&[json!({"x": 1})]);
        assert!(compare("sc", "a", &a, "b", &a.clone()).is_ok());
    }

    #[test]
    fn difference_is_reported_with_diff() {
        let a = t(&[json!({"x": 1}), json!({"y": 1})]);
        let b = t(&[json!({"x": 2}), json!({"y": 2})]);
        let err = compare("sc", "etcd", &a, "coffer", &b).unwrap_err();
        assert!(err.contains("step #0"), "{err}");
        assert!(err.contains("-   \"x\": 1"), "{err}");
        assert!(err.contains("+   \"x\": 2"), "{err}");
        assert!(err.contains("#1 s1"), "{err}");
    }

    #[test]
    fn expected_difference_that_changes_nothing_is_an_error() {
        let a = t(&[json!({"x": 1})]);
        let d = ExpectedDifference {
            scenario: "sc",
            step: "s0",
            issue: "none",
            why: "test",
            expected_from_etcd: |_v| {},
        };
        assert!(apply_expected("sc", &a, &[d]).is_err());
        let d2 = ExpectedDifference {
            expected_from_etcd: |v| v["x"] = json!(2),
            ..d
        };
        let fixed = apply_expected("sc", &a, &[d2]).unwrap();
        assert_eq!(fixed.steps[0].answer, json!({"x": 2}));
    }
}
