//! Request templates: the paths, headers and bodies of a live load, filled per request.
//!
//! Text is sent as written; a `{` followed by a letter or `$` opens a placeholder, and any
//! other brace is text (so a JSON body needs no escaping). A placeholder draws a value, may
//! bind it to a name, and may contain placeholders of its own, which are filled first:
//!
//! | placeholder | value |
//! |---|---|
//! | `{int:LO..HI}` | an integer, both ends included; an end may be `X+K` or `X-K`; `%0W` pads to W digits |
//! | `{float:LO..HI}` | a decimal in [LO, HI), 4 decimals (`%P` for P) |
//! | `{choice:a\|b\|c}` | one of the options; `a*3\|b*1` weights them |
//! | `{text:LO..HI}` | LO..HI random letters and digits |
//! | `{digits:N}` | N random decimal digits |
//! | `{uuid}` | a random (version 4) UUID |
//! | `{date:LO..HI}` | today (UTC) plus LO..HI days, `YYYY-MM-DD` |
//! | `{repeat:N:TEXT}` | TEXT N times |
//! | `{url:TEXT}` | TEXT percent-encoded (for a query or form value) |
//! | `{json:TEXT}` | TEXT as a quoted JSON string |
//! | `{png:W..H}` | a random W x H RGB PNG image (W, H <= 512), base64 |
//! | `{NAME=...}` | any of the above, also bound to NAME for later placeholders |
//! | `{$NAME}` | a bound value: earlier in the same request, captured from an earlier response, or set by the load's set-up |
//!
//! So a hotel search whose check-out follows its check-in is
//! `/hotels?inDate=2015-04-{in=int:9..23%02}&outDate=2015-04-{int:{$in}+1..24%02}`.
//!
//! ```
//! use demo::template::{Template, Vars};
//! use rand::SeedableRng;
//!
//! let t = Template::parse("/user?username=Cornell_{u=int:0..500}&password={repeat:10:{$u}}")?;
//! let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
//! let mut vars = Vars::default();
//! let path = t.fill(&mut rng, &mut vars)?;
//! let u = vars.get("u").unwrap().to_string();
//! assert_eq!(path, format!("/user?username=Cornell_{u}&password={}", u.repeat(10)));
//! # Ok::<(), demo::DemoError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use rand::Rng;

use crate::DemoError;

/// Named values a template reads (`{$NAME}`) and binds (`{NAME=...}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: String) {
        self.0.insert(name.to_string(), value);
    }

    /// Adds every value of `other`, replacing values of the same name.
    pub fn extend(&mut self, other: &Vars) {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Slot {
        bind: Option<String>,
        /// The placeholder's inside, itself a template.
        spec: Template,
    },
}

/// The placeholder kinds, for error messages.
const KINDS: &str = "int, float, choice, text, digits, uuid, date, repeat, url, json, png, $NAME";

fn opens(rest: &str) -> bool {
    rest.starts_with('{') && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '$')
}

impl Template {
    /// Parses `source`; refuses unclosed placeholders and unknown kinds.
    pub fn parse(source: &str) -> Result<Self, DemoError> {
        let t = Self::parse_inner(source)
            .map_err(|e| DemoError::Config(format!("template {source:?}: {e}")))?;
        Ok(t)
    }

    fn parse_inner(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while !rest.is_empty() {
            if !opens(rest) {
                let c = rest.chars().next().expect("not empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            // Find the brace that closes this placeholder, skipping nested ones.
            let mut depth = 0usize;
            let mut close = None;
            let mut i = 0;
            while i < rest.len() {
                if opens(&rest[i..]) {
                    depth += 1;
                } else if rest[i..].starts_with('}') {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                i += rest[i..].chars().next().map_or(1, char::len_utf8);
            }
            let close = close.ok_or_else(|| format!("unclosed placeholder at {rest:?}"))?;
            let inside = &rest[1..close];
            let (bind, spec) = match inside.split_once('=') {
                Some((name, spec))
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && name.starts_with(|c: char| c.is_ascii_alphabetic()) =>
                {
                    (Some(name.to_string()), spec)
                }
                _ => (None, inside),
            };
            let spec = Self::parse_inner(spec)?;
            check_kind(&spec)?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Slot { bind, spec });
            rest = &rest[close + 1..];
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The names this template reads with `{$NAME}` without binding them first itself.
    pub fn free_vars(&self) -> Vec<String> {
        let mut bound = Vec::new();
        let mut free = Vec::new();
        self.collect_vars(&mut bound, &mut free);
        free
    }

    /// Whether `path` is one this (path) template can produce, judged on the part before the
    /// query: literal text must match exactly, each placeholder stands for one or more
    /// characters other than `/`. The demo app routes requests with it.
    pub fn path_matches(&self, path: &str) -> bool {
        // The pattern: literal pieces and wildcards, up to the first literal '?'.
        let mut pattern: Vec<Option<&str>> = Vec::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => match t.split_once('?') {
                    Some((before, _)) => {
                        pattern.push(Some(before));
                        break;
                    }
                    None => pattern.push(Some(t)),
                },
                Part::Slot { .. } => pattern.push(None),
            }
        }
        fn go(pattern: &[Option<&str>], s: &str) -> bool {
            match pattern.split_first() {
                None => s.is_empty(),
                Some((Some(lit), rest)) => s.strip_prefix(lit).is_some_and(|s| go(rest, s)),
                Some((None, rest)) => {
                    let run = s.find('/').unwrap_or(s.len());
                    (1..=run).any(|n| s.is_char_boundary(n) && go(rest, &s[n..]))
                }
            }
        }
        go(&pattern, path)
    }

    /// The names this template binds (`{NAME=...}`).
    pub fn bound_vars(&self) -> Vec<String> {
        let mut bound = Vec::new();
        self.collect_vars(&mut bound, &mut Vec::new());
        bound
    }

    fn collect_vars(&self, bound: &mut Vec<String>, free: &mut Vec<String>) {
        for p in &self.parts {
            if let Part::Slot { bind, spec } = p {
                spec.collect_vars(bound, free);
                if let Some(Part::Text(t)) = spec.parts.first() {
                    if let Some(name) = t.strip_prefix('$') {
                        if spec.parts.len() == 1
                            && !bound.iter().any(|b| b == name)
                            && !free.iter().any(|f| f == name)
                        {
                            free.push(name.to_string());
                        }
                    }
                }
                if let Some(b) = bind {
                    bound.push(b.clone());
                }
            }
        }
    }

    /// Fills the template, reading and binding `vars`.
    pub fn fill(&self, rng: &mut impl Rng, vars: &mut Vars) -> Result<String, DemoError> {
        let mut out = String::new();
        self.fill_into(&mut out, rng, vars)
            .map_err(DemoError::Config)?;
        Ok(out)
    }

    fn fill_into(
        &self,
        out: &mut String,
        rng: &mut impl Rng,
        vars: &mut Vars,
    ) -> Result<(), String> {
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Slot { bind, spec } => {
                    let mut inside = String::new();
                    spec.fill_into(&mut inside, rng, vars)?;
                    let value =
                        draw(&inside, rng, vars).map_err(|e| format!("{{{inside}}}: {e}"))?;
                    if let Some(name) = bind {
                        vars.set(name, value.clone());
                    }
                    out.push_str(&value);
                }
            }
        }
        Ok(())
    }
}

/// Refuses an unknown kind where the placeholder's kind is written out (not itself filled in).
fn check_kind(spec: &Template) -> Result<(), String> {
    let Some(Part::Text(t)) = spec.parts.first() else {
        return Err(format!("a placeholder starts with its kind ({KINDS})"));
    };
    if t.starts_with('$') {
        return Ok(());
    }
    let kind = t.split(':').next().unwrap_or("");
    let known = [
        "int", "float", "choice", "text", "digits", "uuid", "date", "repeat", "url", "json", "png",
    ];
    if !known.contains(&kind) || (kind != "uuid" && !t.contains(':') && spec.parts.len() == 1) {
        return Err(format!("unknown placeholder {{{t}}} (kinds: {KINDS})"));
    }
    Ok(())
}

/// An integer bound: `N`, `N+K` or `N-K`.
fn int_bound(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || format!("bad integer {s:?}");
    // A leading minus belongs to the number.
    let split = s
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i);
    match split {
        Some(i) => {
            let (a, b) = (&s[..i], &s[i + 1..]);
            let a: i64 = a.trim().parse().map_err(|_| bad())?;
            let b: i64 = b.trim().parse().map_err(|_| bad())?;
            if s.as_bytes()[i] == b'+' {
                a.checked_add(b).ok_or_else(bad)
            } else {
                a.checked_sub(b).ok_or_else(bad)
            }
        }
        None => s.parse().map_err(|_| bad()),
    }
}

fn range<'a>(arg: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    arg.split_once("..")
        .ok_or_else(|| format!("{what}:{arg}: expected LO..HI"))
}

/// Draws one placeholder's value from its filled-in inside.
fn draw(inside: &str, rng: &mut impl Rng, vars: &Vars) -> Result<String, String> {
    if let Some(name) = inside.strip_prefix('$') {
        return vars
            .get(name)
            .map(str::to_string)
            .ok_or_else(|| format!("no value named {name:?} here"));
    }
    let (kind, arg) = inside.split_once(':').unwrap_or((inside, ""));
    let bad = |why: &str| why.to_string();
    match kind {
        "int" => {
            let (spec, pad) = match arg.split_once("%0") {
                Some((s, w)) => match w.parse::<usize>() {
                    Ok(w) if w <= 64 => (s, Some(w)),
                    _ => return Err(bad("%0W pads to W <= 64 digits")),
                },
                None => (arg, None),
            };
            let (lo, hi) = range(spec, "int")?;
            let (lo, hi) = (int_bound(lo)?, int_bound(hi)?);
            if hi < lo {
                return Err(bad("empty range"));
            }
            let v = rng.random_range(lo..=hi);
            Ok(match pad {
                Some(w) => format!("{v:0w$}"),
                None => v.to_string(),
            })
        }
        "float" => {
            let (spec, digits) = match arg.split_once('%') {
                Some((s, p)) => match p.parse::<usize>() {
                    Ok(p) if p <= 17 => (s, p),
                    _ => return Err(bad("%P keeps P <= 17 decimals")),
                },
                None => (arg, 4),
            };
            let (lo, hi) = range(spec, "float")?;
            let lo: f64 = lo.trim().parse().map_err(|_| bad("bad number"))?;
            let hi: f64 = hi.trim().parse().map_err(|_| bad("bad number"))?;
            if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                return Err(bad("empty range"));
            }
            Ok(format!("{:.digits$}", rng.random_range(lo..hi)))
        }
        "choice" => {
            let mut options = Vec::new();
            for o in arg.split('|') {
                match o.rsplit_once('*') {
                    Some((text, w)) if w.parse::<f64>().is_ok() => {
                        let w: f64 = w.parse().expect("checked");
                        if !(w.is_finite() && w >= 0.0) {
                            return Err(bad("a weight is a non-negative number"));
                        }
                        options.push((text, w));
                    }
                    _ => options.push((o, 1.0)),
                }
            }
            let total: f64 = options.iter().map(|o| o.1).sum();
            if total <= 0.0 {
                return Err(bad("all weights are zero"));
            }
            let mut x = rng.random_range(0.0..total);
            for (text, w) in &options {
                if x < *w {
                    return Ok(text.to_string());
                }
                x -= w;
            }
            Ok(options.last().expect("split gives one").0.to_string())
        }
        "text" => {
            let (lo, hi) = range(arg, "text")?;
            let (lo, hi) = (int_bound(lo)?, int_bound(hi)?);
            if lo < 0 || hi < lo || hi > 1 << 20 {
                return Err(bad("lengths 0 <= LO <= HI <= 1048576"));
            }
            const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            let n = rng.random_range(lo..=hi) as usize;
            Ok((0..n)
                .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
                .collect())
        }
        "digits" => {
            let n: usize = arg.trim().parse().map_err(|_| bad("digits:N"))?;
            if n > 1 << 20 {
                return Err(bad("too many digits"));
            }
            Ok((0..n)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect())
        }
        "uuid" => {
            let mut b: [u8; 16] = rng.random();
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            let mut s = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                let _ = write!(s, "{byte:02x}");
            }
            Ok(s)
        }
        "date" => {
            let (lo, hi) = range(arg, "date")?;
            let (lo, hi) = (int_bound(lo)?, int_bound(hi)?);
            if hi < lo || lo.abs() > 100_000 || hi.abs() > 100_000 {
                return Err(bad("LO <= HI, within 100000 days"));
            }
            let today = time::OffsetDateTime::now_utc().date();
            let d = today + time::Duration::days(rng.random_range(lo..=hi));
            Ok(format!(
                "{:04}-{:02}-{:02}",
                d.year(),
                u8::from(d.month()),
                d.day()
            ))
        }
        "repeat" => {
            let (n, text) = arg.split_once(':').ok_or_else(|| bad("repeat:N:TEXT"))?;
            let n: usize = n.trim().parse().map_err(|_| bad("repeat:N:TEXT"))?;
            if n.saturating_mul(text.len()) > 1 << 20 {
                return Err(bad("longer than 1 MiB"));
            }
            Ok(text.repeat(n))
        }
        "url" => Ok(form_urlencoded::byte_serialize(arg.as_bytes()).collect()),
        "json" => Ok(serde_json::Value::String(arg.to_string()).to_string()),
        "png" => {
            let (w, h) = range(arg, "png")?;
            let (w, h) = (int_bound(w)?, int_bound(h)?);
            if !(1..=512).contains(&w) || !(1..=512).contains(&h) {
                return Err(bad("sides 1..512"));
            }
            Ok(base64::engine::general_purpose::STANDARD.encode(png(w as u32, h as u32, rng)?))
        }
        _ => Err(bad(&format!("unknown kind (kinds: {KINDS})"))),
    }
}

/// A smooth random picture (a gradient with noise): decodable by any image library, so a
/// service that classifies images does real work on it.
fn png(w: u32, h: u32, rng: &mut impl Rng) -> Result<Vec<u8>, String> {
    let base: [u8; 3] = rng.random();
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let noise: u8 = rng.random_range(0..32);
            pixels.push(
                base[0]
                    .wrapping_add((x * 255 / w) as u8)
                    .wrapping_add(noise),
            );
            pixels.push(base[1].wrapping_add((y * 255 / h) as u8));
            pixels.push(base[2].wrapping_add(noise));
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    fn fill(t: &str, seed: u64) -> String {
        let mut vars = Vars::default();
        Template::parse(t)
            .unwrap()
            .fill(&mut Pcg64Mcg::seed_from_u64(seed), &mut vars)
            .unwrap()
    }

    #[test]
    fn text_and_json_braces_pass_through() {
        assert_eq!(fill("/plain", 1), "/plain");
        assert_eq!(
            fill(r#"{"n": {int:7..7}, "o": {}, "k": "{choice:x}"}"#, 1),
            r#"{"n": 7, "o": {}, "k": "x"}"#
        );
    }

    #[test]
    fn dependent_values_and_padding() {
        for seed in 0..200 {
            let p = fill("{in=int:9..23%02}/{int:{$in}+1..24%02}", seed);
            let (a, b) = p.split_once('/').unwrap();
            assert_eq!((a.len(), b.len()), (2, 2), "{p}");
            let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
            assert!((9..=23).contains(&a) && b > a && b <= 24, "{p}");
        }
        assert_eq!(fill("{int:-5..-5}/{int:3-1..3-1}", 1), "-5/2");
    }

    #[test]
    fn each_kind_draws_within_its_range() {
        for seed in 0..100 {
            let f: f64 = fill("{float:37.783..38.264%3}", seed).parse().unwrap();
            assert!((37.783..=38.264).contains(&f), "{f}");
            let t = fill("{text:3..5}", seed);
            assert!((3..=5).contains(&t.len()) && t.chars().all(|c| c.is_ascii_alphanumeric()));
            let d = fill("{digits:8}", seed);
            assert!(d.len() == 8 && d.chars().all(|c| c.is_ascii_digit()));
            let u = fill("{uuid}", seed);
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4");
            let date = fill("{date:1..150}", seed);
            assert_eq!(date.len(), 10);
        }
        assert_eq!(fill("{repeat:3:{int:7..7}}", 1), "777");
        assert_eq!(fill("{url:a b&c=d/é}", 1), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(fill(r#"{json:say "hi"}"#, 1), r#""say \"hi\"""#);
        let img = base64::engine::general_purpose::STANDARD
            .decode(fill("{png:8..4}", 1))
            .unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(img));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), (8, 4));
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let n = 4000;
        let heavy = (0..n)
            .filter(|&s| fill("{choice:a*3|b*1}", s) == "a")
            .count() as f64;
        assert!((heavy / n as f64 - 0.75).abs() < 0.03, "{heavy}");
        assert!((0..50).all(|s| fill("{choice:a*0|b}", s) == "b"));
    }

    #[test]
    fn paths_match_their_templates() {
        let t = |s: &str| Template::parse(s).unwrap();
        let food = t("/api/foods/{date:1..150}/Shang%20Hai/D1345");
        assert!(food.path_matches("/api/foods/2026-12-01/Shang%20Hai/D1345"));
        assert!(
            !food.path_matches("/api/foods//Shang%20Hai/D1345"),
            "a value is not empty"
        );
        assert!(
            !food.path_matches("/api/foods/a/b/Shang%20Hai/D1345"),
            "nor holds a /"
        );
        assert!(!food.path_matches("/api/foods/2026-12-01/Su%20Zhou/D1345"));
        let hotels = t("/hotels?inDate={int:1..9}&lat={float:1..2}");
        assert!(hotels.path_matches("/hotels"));
        assert!(!hotels.path_matches("/hotels/x"));
        assert!(t("/u/{$id}").path_matches("/u/abc-1"));
        assert!(t("/a{int:1..2}b").path_matches("/a12b"));
        assert!(!t("/plain").path_matches("/plainer"));
    }

    #[test]
    fn free_vars_are_those_read_before_being_bound() {
        let t = Template::parse("{a=int:1..2}{$a}{$token}{x=$b}{$x}").unwrap();
        assert_eq!(t.free_vars(), vec!["token".to_string(), "b".to_string()]);
        assert_eq!(t.bound_vars(), vec!["a".to_string(), "x".to_string()]);
        let mut vars = Vars::default();
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        assert!(t.fill(&mut rng, &mut vars).is_err(), "no value for $token");
        vars.set("token", "T".into());
        vars.set("b", "B".into());
        let out = t.fill(&mut rng, &mut vars).unwrap();
        assert!(out.ends_with("TBB"), "{out}");
    }

    /// Whatever a scenario file says, parsing and filling answer with a value or an error,
    /// never a panic.
    #[test]
    fn arbitrary_templates_never_panic() {
        let pieces = [
            "{",
            "}",
            "$",
            "=",
            ":",
            "..",
            "|",
            "*",
            "%",
            "%0",
            "+",
            "-",
            "int",
            "float",
            "choice",
            "text",
            "digits",
            "uuid",
            "date",
            "repeat",
            "url",
            "json",
            "png",
            "a",
            "x",
            "1",
            "0",
            "99999999999999999999",
            "-5",
            "é",
            " ",
            "{$a}",
            "{int:1..3}",
            "\u{1F600}",
        ];
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        for _ in 0..20_000 {
            let n = rng.random_range(1..12);
            let t: String = (0..n)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            if let Ok(parsed) = Template::parse(&t) {
                let mut vars = Vars::default();
                vars.set("a", "5".into());
                let _ = parsed.fill(&mut rng, &mut vars);
            }
        }
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for bad in ["/x{int:1..2", "/x{nope:1}", "/x{int}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for bad in [
            "{int:3..1}",
            "{int:a..b}",
            "{float:2..1}",
            "{choice:a*0|b*0}",
            "{png:0..600}",
            "{text:5..1}",
            "{int:1..2%0x}",
            "{int:1..}",
            "{int:é..2}",
            "{text:1..-}",
            "{int:1..2%0100000000000}",
            "{float:1..2%100000000000}",
        ] {
            let t = Template::parse(bad).unwrap();
            let err = t.fill(&mut rng, &mut Vars::default()).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }
}
