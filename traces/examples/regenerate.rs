//! Rewrites `traces/data/*.txt` from the built-in generators (run after changing one).
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for name in traces::BUILTIN {
        let (g, seed) = traces::Generator::builtin(name).expect("listed");
        let t = g.generate(3600, seed);
        t.write(&dir.join(format!("{name}.txt")))?;
        println!("{name}: {:?}", t.stats());
    }
    Ok(())
}
