//! Generates the prost messages and tonic client/server for `paramdb.proto`, plus the file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("paramdb_descriptor.bin"))
        .bytes(".paramdb.v1")
        .compile_protos(&["paramdb.proto"], &["."])?;
    println!("cargo:rerun-if-changed=paramdb.proto");
    Ok(())
}
