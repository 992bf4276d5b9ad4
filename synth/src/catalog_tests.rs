//! Checks of `write_catalog`: files listed, decodable, sized as recorded, formats mixed
//! as asked, and byte-identical under any thread count.

use std::fs;

use super::*;

fn spec() -> CatalogSpec {
    CatalogSpec { seed: 5, count: 24, min_long_side: 64, max_long_side: 160, jpeg_share: 0.5 }
}

#[test]
fn catalog_files_match_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec();
    let summary = write_catalog(dir.path(), &spec).expect("write");
    assert_eq!(summary.count, spec.count);
    assert_eq!(read_catalog(dir.path()).expect("read"), summary);
    let mut jpegs = 0;
    for (i, e) in summary.entries.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        assert_eq!(e.id, sample_id(i as u64));
        assert_eq!((e.seed, e.id.len()), (spec.seed, "item-000000".len()));
        assert!((64..=160).contains(&e.width.max(e.height)), "{e:?}");
        let img = image::open(dir.path().join(&e.image)).expect("image decodes");
        assert_eq!((img.width(), img.height()), (e.width, e.height));
        assert_eq!(img.color(), image::ColorType::Rgb8);
        let mask = image::open(dir.path().join(&e.mask)).expect("mask decodes");
        assert_eq!(mask.color(), image::ColorType::L8);
        assert_eq!((mask.width(), mask.height()), (e.width, e.height));
        if e.image.ends_with(".jpg") {
            jpegs += 1;
        } else {
            assert!(e.image.ends_with(".png"));
        }
        let sample = render_sample(spec.seed, e.index, spec.min_long_side, spec.max_long_side);
        assert_eq!(mask.to_luma8().as_raw(), sample.alpha.as_raw());
        assert_eq!((e.object.as_str(), e.background.as_str()), (sample.object.as_str(), sample.background.as_str()));
    }
    assert!((6..=18).contains(&jpegs), "{jpegs} jpegs of 24");
}

#[test]
fn jpeg_share_extremes_are_respected() {
    assert!((0..200).all(|i| !is_jpeg(1, i, 0.0)));
    assert!((0..200).all(|i| is_jpeg(1, i, 1.0)));
    let share = (0..1000).filter(|&i| is_jpeg(1, i, 0.3)).count();
    assert!((250..350).contains(&share), "{share}");
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let spec = CatalogSpec { count: 8, ..spec() };
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    write_catalog(a.path(), &spec).expect("write");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    pool.install(|| write_catalog(b.path(), &spec)).expect("write");
    for name in ["catalog.json"]
        .into_iter()
        .map(String::from)
        .chain(read_catalog(a.path()).expect("read").entries.into_iter().flat_map(|e| [e.image, e.mask]))
    {
        let (x, y) = (fs::read(a.path().join(&name)), fs::read(b.path().join(&name)));
        assert_eq!(x.expect("file a"), y.expect("file b"), "{name}");
    }
}

#[test]
fn empty_long_side_range_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = CatalogSpec { min_long_side: 900, max_long_side: 400, ..CatalogSpec::default() };
    let err = write_catalog(dir.path(), &bad).expect_err("invalid");
    assert!(matches!(err, SynthError::InvalidSpec { .. }) && !err.is_retryable());
}
