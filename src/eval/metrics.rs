//! Error rates with spoof as the positive class (a higher score means more likely synthetic).

/// ASVspoof 5 countermeasure cost model: a missed genuine caller costs 1, an accepted spoof 10,
/// with a spoof prior of 5%.
pub const DCF_COST_MISS: f64 = 1.0;
pub const DCF_COST_FA: f64 = 10.0;
pub const DCF_PRIOR_SPOOF: f64 = 0.05;

/// Rates at one threshold: `p_miss` = genuine files flagged, `p_fa` = spoofs passed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRates {
    pub threshold: f64,
    pub p_miss: f64,
    pub p_fa: f64,
}

/// Every operating point, from the lowest threshold (flag everything) to above the highest.
pub fn det_points(bonafide: &[f64], spoof: &[f64]) -> Vec<ErrorRates> {
    if bonafide.is_empty() || spoof.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<(f64, bool)> = bonafide
        .iter()
        .map(|&s| (s, false))
        .chain(spoof.iter().map(|&s| (s, true)))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (nb, ns) = (bonafide.len() as f64, spoof.len() as f64);
    // Threshold t flags scores >= t. Start below everything: all genuine flagged, no spoof passed.
    let mut points = vec![ErrorRates {
        threshold: f64::NEG_INFINITY,
        p_miss: 1.0,
        p_fa: 0.0,
    }];
    let (mut bona_below, mut spoof_below) = (0.0, 0.0);
    let mut i = 0;
    while i < scored.len() {
        let t = scored[i].0;
        while i < scored.len() && scored[i].0 == t {
            if scored[i].1 {
                spoof_below += 1.0;
            } else {
                bona_below += 1.0;
            }
            i += 1;
        }
        points.push(ErrorRates {
            threshold: scored.get(i).map_or(f64::INFINITY, |s| s.0),
            p_miss: 1.0 - bona_below / nb,
            p_fa: spoof_below / ns,
        });
    }
    points
}

/// Equal error rate and the threshold where it is reached.
pub fn eer(bonafide: &[f64], spoof: &[f64]) -> Option<(f64, f64)> {
    let points = det_points(bonafide, spoof);
    let best = points.iter().min_by(|a, b| {
        (a.p_miss - a.p_fa)
            .abs()
            .total_cmp(&(b.p_miss - b.p_fa).abs())
    })?;
    Some(((best.p_miss + best.p_fa) / 2.0, best.threshold))
}

/// Normalised minimum detection cost (ASVspoof 5 parameters) and its threshold.
pub fn min_dcf(bonafide: &[f64], spoof: &[f64]) -> Option<(f64, f64)> {
    let default = (DCF_COST_MISS * (1.0 - DCF_PRIOR_SPOOF)).min(DCF_COST_FA * DCF_PRIOR_SPOOF);
    det_points(bonafide, spoof)
        .iter()
        .map(|p| {
            let dcf = DCF_COST_MISS * (1.0 - DCF_PRIOR_SPOOF) * p.p_miss
                + DCF_COST_FA * DCF_PRIOR_SPOOF * p.p_fa;
            (dcf / default, p.threshold)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_scores_have_zero_eer() {
        let (e, t) = eer(&[0.1, 0.2, 0.3], &[0.7, 0.8]).unwrap();
        assert_eq!(e, 0.0);
        assert!(t > 0.3 && t <= 0.7);
        assert_eq!(min_dcf(&[0.1, 0.2], &[0.8, 0.9]).unwrap().0, 0.0);
    }

    #[test]
    fn identical_scores_are_at_chance() {
        let (e, _) = eer(&[0.5; 10], &[0.5; 10]).unwrap();
        assert!((e - 0.5).abs() < 1e-9);
    }

    #[test]
    fn eer_of_a_known_overlap() {
        // Genuine 0..10, spoof 5..15 (integers): threshold 10 flags genuine {} and passes spoof 5..9.
        let b: Vec<f64> = (0..10).map(f64::from).collect();
        let s: Vec<f64> = (5..15).map(f64::from).collect();
        let (e, _) = eer(&b, &s).unwrap();
        assert!((e - 0.25).abs() < 0.051, "{e}");
        let (dcf, _) = min_dcf(&b, &s).unwrap();
        assert!(dcf > 0.0 && dcf <= 1.0, "{dcf}");
    }

    #[test]
    fn empty_classes_have_no_eer() {
        assert!(eer(&[], &[0.5]).is_none());
        assert!(min_dcf(&[0.5], &[]).is_none());
    }
}
