//! The XDP program's parser: every input is a frame run through BPF_PROG_TEST_RUN, and the
//! program's verdict must be the reference parser's (`screen_tests::reference`, the one the
//! property test uses), with the frame unchanged or, for a RST, a correct reply.
//!
//! The first byte picks the kernel action (odd: RST, even: drop); the rest is the frame,
//! from 14 bytes (an Ethernet header, the least BPF_PROG_TEST_RUN takes) to 1514. Loading
//! the program needs root; `cargo xtask fuzz` skips this target, loudly, without it.

#![no_main]

use std::cell::RefCell;

use screen_tests::{
    reference::{World, check_frame},
    rng::SplitMix64,
    xdp::ScreenUnderTest,
};
use screen_user::kernel::KernelAction;

/// The frames the Ethernet MTU allows, headers included.
const MAX_FRAME: usize = 1514;

/// The program with the reference's world loaded, and the action it is configured with.
struct Harness {
    screen: ScreenUnderTest,
    world: World,
    rst: bool,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn harness() -> Harness {
    let world = World::new(&mut SplitMix64::seeded(0x5eed_f022));
    let mut screen = ScreenUnderTest::load().unwrap_or_else(|e| {
        panic!("loading the XDP program (BPF_PROG_TEST_RUN needs root): {e}")
    });
    world.install(&mut screen, KernelAction::Drop);
    Harness {
        screen,
        world,
        rst: false,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, frame)) = data.split_first() else {
        return;
    };
    if frame.len() < 14 {
        return;
    }
    let frame = &frame[..frame.len().min(MAX_FRAME)];
    let rst = first & 1 == 1;
    HARNESS.with_borrow_mut(|slot| {
        let harness = slot.get_or_insert_with(harness);
        if harness.rst != rst {
            let action = if rst { KernelAction::Rst } else { KernelAction::Drop };
            harness.world.configure(&mut harness.screen, action);
            harness.rst = rst;
        }
        if let Err(wrong) = check_frame(&harness.screen, &harness.world, frame, rst) {
            panic!("the XDP program and the reference parser disagree: {wrong}");
        }
    });
});
