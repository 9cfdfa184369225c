//! The allocator the `ficus` binary installs: mimalloc through `vendor/mimalloc`, whose patch
//! sends word-aligned requests to mimalloc's unaligned functions. Every block must still have
//! the alignment asked for and keep its bytes when it grows, on both sides of that split.
#![allow(clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Byte sizes around mimalloc's classes: small blocks up to 1 KiB, power-of-two blocks up to
/// 4 KiB, medium and large pages.
const SIZES: [usize; 14] = [
    1,
    7,
    8,
    24,
    100,
    1000,
    1024,
    1025,
    2400,
    4096,
    5000,
    9000,
    70_000,
    1 << 20,
];

/// Allocates `bytes` worth of `T`, fills it, grows it three times over (a realloc) and checks
/// the alignment and contents at each step.
fn check<T: Copy + PartialEq + std::fmt::Debug>(bytes: usize, make: fn(u8) -> T) {
    let align = std::mem::align_of::<T>();
    let n = bytes.div_ceil(std::mem::size_of::<T>()).max(1);
    let mut v: Vec<T> = Vec::with_capacity(n);
    assert_eq!(
        v.as_ptr() as usize % align,
        0,
        "{n} × {} bytes aligned to {align}",
        std::mem::size_of::<T>()
    );
    v.extend((0..n).map(|i| make((i % 251) as u8)));
    v.reserve_exact(2 * n);
    assert_eq!(
        v.as_ptr() as usize % align,
        0,
        "grown to {} elements aligned to {align}",
        3 * n
    );
    for (i, x) in v.iter().enumerate() {
        assert_eq!(
            *x,
            make((i % 251) as u8),
            "element {i} of {n} aligned to {align} after growing"
        );
    }
    v.truncate(1);
    v.shrink_to_fit();
    assert_eq!(v.as_ptr() as usize % align, 0, "shrunk, aligned to {align}");
    assert_eq!(v[0], make(0));
}

macro_rules! aligned {
    ($($name:ident = $align:literal),*) => {$(
        #[repr(align($align))]
        #[derive(Clone, Copy, PartialEq, Debug)]
        struct $name(u8);
    )*};
}
aligned!(A16 = 16, A32 = 32, A64 = 64, A128 = 128, A4096 = 4096);

#[test]
fn blocks_of_every_size_and_alignment_are_aligned_and_keep_their_bytes() {
    for bytes in SIZES {
        check::<u8>(bytes, |b| b);
        check::<u16>(bytes, u16::from);
        check::<u32>(bytes, u32::from);
        check::<u64>(bytes, u64::from);
        check::<A16>(bytes, A16);
        check::<A32>(bytes, A32);
        check::<A64>(bytes, A64);
        check::<A128>(bytes, A128);
        check::<A4096>(bytes.min(1 << 16), A4096);
    }
}

#[test]
fn zeroed_blocks_are_zero() {
    for bytes in SIZES {
        // `vec![0; n]` asks the allocator for zeroed memory.
        let v = vec![0u64; bytes.div_ceil(8)];
        assert_eq!(v.as_ptr() as usize % 8, 0);
        assert!(v.iter().all(|&x| x == 0), "{bytes} zeroed bytes");
        let b = vec![0u8; bytes];
        assert!(b.iter().all(|&x| x == 0), "{bytes} zeroed bytes");
    }
}

#[test]
fn blocks_freed_on_other_threads_are_reused_safely() {
    // mimalloc frees a block from another thread through a separate list; a block allocated by
    // the unaligned path must go back the same way as before the patch.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                (0..2000)
                    .map(|i| vec![(t * 7 + i) as u8; 100 + (i % 40) * 97])
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (t, blocks) in all.iter().enumerate() {
        for (i, b) in blocks.iter().enumerate() {
            assert!(b.iter().all(|&x| x == (t * 7 + i) as u8));
        }
    }
    drop(all);
    check::<u64>(2400, u64::from);
}
