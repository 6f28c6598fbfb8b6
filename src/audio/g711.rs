//! G.711 mu-law and A-law expansion (ITU-T G.711), for audio pushed over the network as
//! telephony codes. Files in these encodings are decoded by symphonia instead.

/// Expands one mu-law byte to a linear 16-bit sample.
pub const fn mulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Expands one A-law byte to a linear 16-bit sample.
pub const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let sign = a & 0x80;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if sign != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn table(alaw: bool) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        let v = if alaw {
            alaw_to_linear(i as u8)
        } else {
            mulaw_to_linear(i as u8)
        };
        t[i] = v as f32 / 32768.0;
        i += 1;
    }
    t
}

static MULAW: [f32; 256] = table(false);
static ALAW: [f32; 256] = table(true);

/// Which G.711 law a byte stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    MuLaw,
    ALaw,
}

/// Appends the expanded samples of `codes` to `out` as `f32` in [-1, 1].
pub fn decode_into(law: Law, codes: &[u8], out: &mut Vec<f32>) {
    let t = match law {
        Law::MuLaw => &MULAW,
        Law::ALaw => &ALAW,
    };
    out.extend(codes.iter().map(|&c| t[c as usize]));
}

/// ITU-T G.711 mu-law compressor (as in Sun's g711.c).
pub fn linear_to_mulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    while exponent > 0 && s & (0x4000 >> (7 - exponent)) == 0 {
        exponent -= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// ITU-T G.711 A-law compressor.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s - 1;
    }
    s = s.min(32767);
    let code = if s < 256 {
        (s >> 4) as u8
    } else {
        let mut exponent = 7;
        while exponent > 1 && s & (0x4000 >> (7 - exponent)) == 0 {
            exponent -= 1;
        }
        ((exponent << 4) | ((s >> (exponent + 3)) & 0x0F)) as u8
    };
    (code | sign) ^ 0x55
}

/// Encodes `[-1, 1]` samples (clipped) as G.711 codes, appending to `out`.
pub fn encode_into(law: Law, samples: &[f32], out: &mut Vec<u8>) {
    let to_code = match law {
        Law::MuLaw => linear_to_mulaw,
        Law::ALaw => linear_to_alaw,
    };
    out.extend(
        samples
            .iter()
            .map(|&s| to_code((s.clamp(-1.0, 1.0) * 32767.0) as i16)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_codes() {
        assert_eq!(mulaw_to_linear(0xFF), 0);
        assert_eq!(mulaw_to_linear(0x7F), 0);
        assert_eq!(mulaw_to_linear(0x00), -32124);
        assert_eq!(mulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    proptest! {
        /// Every code expands to a value that re-encodes to the same code (the laws are bijective
        /// on their code books, apart from mu-law's two zeros).
        #[test]
        fn codes_roundtrip(code in any::<u8>()) {
            let m = mulaw_to_linear(code);
            let back = linear_to_mulaw(m);
            prop_assert!(back == code || (m == 0 && (back == 0xFF || back == 0x7F)));
            prop_assert_eq!(linear_to_alaw(alaw_to_linear(code)), code);
        }

        /// Companding keeps the error within half a quantisation step (relative error ~3%).
        #[test]
        fn quantisation_error_is_bounded(sample in -32000i16..32000) {
            for (enc, dec) in [
                (linear_to_mulaw as fn(i16) -> u8, mulaw_to_linear as fn(u8) -> i16),
                (linear_to_alaw, alaw_to_linear),
            ] {
                let y = dec(enc(sample)) as i32;
                let err = (y - sample as i32).abs();
                prop_assert!(err <= 16 + (sample as i32).abs() / 16, "{sample} -> {y}");
            }
        }
    }
}
