//! A tiny x86 guest for testing the microVM backends where no Linux guest can
//! boot (KVM-PVM hosts, CI): [`tiny_guest_elf`] emits an ELF "kernel" of a few
//! hundred bytes that prints a line to COM1 and then powers off, ticks forever
//! or halts.
//!
//! The machine code is written so that the *same bytes* run in 64-bit long
//! mode (firecracker's ELF boot: its own identity page tables, flat segments)
//! and in 32-bit protected mode without paging (the PVH entry that
//! cloud-hypervisor uses): only `mov r32, imm32`, `lodsb`, `out`, `loop`,
//! short jumps and absolute `[disp32]` memory operands written with a SIB
//! byte (a plain `mod=00 rm=101` operand would be RIP-relative in long mode).
//! It uses no stack (firecracker sets one, PVH does not).
//!
//! The annotated listing is in `tests/fixtures/tiny-guest/README.md`. Test
//! support, not part of the library; its own tests are in tests/firecracker.rs.

/// What the tiny guest does after its greeting line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyGuestBehavior {
    /// Powers the machine off: ACPI S5 on port 0x600 (cloud-hypervisor), then
    /// i8042 reset `out 0x64, 0xfe` (firecracker ends the VMM on it).
    PowerOff,
    /// Prints [`TINY_GUEST_TICK`] plus a digit `0`..`9` (cycling) forever,
    /// with a busy-wait delay in between (for pause/snapshot/restore tests).
    Tick,
    /// Halts forever without further output.
    Halt,
}

/// The line the tiny guest prints first.
pub const TINY_GUEST_HELLO: &str = "attest-tiny-guest: hello from the tiny guest";
/// The prefix of each tick line (followed by one digit).
pub const TINY_GUEST_TICK: &str = "attest-tiny-guest: tick ";

/// Guest-physical load address (above firecracker's 1 MiB `HIMEM_START`).
pub const BASE: u32 = 0x0020_0000;
/// Time-stamp-counter cycles between ticks (about a quarter second at 2–3 GHz).
const TICK_CYCLES: u32 = 0x3000_0000;

const EHDR: usize = 64;
const PHDR: usize = 56;

/// Machine code under construction, with the absolute address of byte 0.
struct Code {
    bytes: Vec<u8>,
    /// (offset of an imm32 to patch, index of the data item it points at)
    fixups: Vec<(usize, usize)>,
}

impl Code {
    fn emit(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }

    /// `mov esi, <address of data item>`, patched once data is placed.
    fn mov_esi_data(&mut self, item: usize) {
        self.emit(&[0xBE]);
        self.fixups.push((self.bytes.len(), item));
        self.emit(&[0, 0, 0, 0]);
    }

    /// An absolute `[disp32]` operand (ModRM with SIB, no base, no index):
    /// the same meaning in 32- and 64-bit mode.
    fn abs_operand(&mut self, modrm_reg: u8, item: usize, disp: u32) {
        self.emit(&[(modrm_reg << 3) | 0b100, 0x25]);
        self.fixups.push((self.bytes.len(), item));
        self.emit(&disp.to_le_bytes());
    }

    /// Prints the NUL-terminated string at data item `item` to COM1.
    fn print(&mut self, item: usize) {
        self.mov_esi_data(item);
        self.emit(&[
            0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
            0xAC, //                   L: lodsb
            0x84, 0xC0, //             test al, al
            0x74, 0x03, //             jz done
            0xEE, //                   out dx, al
            0xEB, 0xF8, //             jmp L
        ]);
    }
}

/// The ELF image of the tiny guest. `pvh` adds the Xen PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`), which cloud-hypervisor requires; without it
/// firecracker enters at `e_entry` in 64-bit long mode.
pub fn tiny_guest_elf(behavior: TinyGuestBehavior, pvh: bool) -> Vec<u8> {
    // Data items: 0 = hello line, 1 = tick line (its digit is patched in place).
    let hello = format!("{TINY_GUEST_HELLO}\n\0").into_bytes();
    let tick = format!("{TINY_GUEST_TICK}0\n\0").into_bytes();
    let tick_digit = TINY_GUEST_TICK.len() as u32;

    let mut c = Code {
        bytes: Vec::new(),
        fixups: Vec::new(),
    };
    c.emit(&[0xFA, 0xFC]); // cli; cld
    c.print(0);
    match behavior {
        TinyGuestBehavior::PowerOff => c.emit(&[
            0x66, 0xBA, 0x00, 0x06, // mov dx, 0x600   (cloud-hypervisor ACPI sleep control)
            0xB0, 0x34, //             mov al, 0x34    (SLP_EN | S5 << 2)
            0xEE, //                   out dx, al
            0xB0, 0xFE, //             mov al, 0xfe
            0xE6, 0x64, //             out 0x64, al    (i8042 reset: firecracker exits)
            0xF4, //                   H: hlt
            0xEB, 0xFD, //             jmp H
        ]),
        TinyGuestBehavior::Halt => c.emit(&[0xF4, 0xEB, 0xFD]),
        TinyGuestBehavior::Tick => {
            let top = c.bytes.len();
            // inc byte [tick + digit]
            c.emit(&[0xFE]);
            c.abs_operand(0, 1, tick_digit);
            // cmp byte [tick + digit], '9' + 1
            c.emit(&[0x80]);
            c.abs_operand(7, 1, tick_digit);
            c.emit(&[b'9' + 1]);
            // jne skip (over the 8-byte mov below)
            c.emit(&[0x75, 0x08]);
            // mov byte [tick + digit], '0'
            c.emit(&[0xC6]);
            c.abs_operand(0, 1, tick_digit);
            c.emit(b"0");
            c.print(1);
            // Busy-wait TICK_CYCLES time-stamp-counter cycles (low 32 bits,
            // wrapping subtraction), so the pace does not depend on how fast
            // (or how trapped) the vCPU executes.
            c.emit(&[
                0x0F, 0x31, //         rdtsc
                0x89, 0xC3, //         mov ebx, eax
                0x0F, 0x31, //         W: rdtsc
                0x29, 0xD8, //         sub eax, ebx
                0x3D, //               cmp eax, TICK_CYCLES
            ]);
            c.emit(&TICK_CYCLES.to_le_bytes());
            c.emit(&[0x72, 0xF5]); //  jb W
            let back = top as i64 - (c.bytes.len() as i64 + 5);
            c.emit(&[0xE9]); // jmp top
            c.emit(&(back as i32).to_le_bytes());
        }
    }

    // Layout: ELF header, program headers, PVH note, code, data.
    let phnum = if pvh { 2 } else { 1 };
    let note_off = EHDR + PHDR * phnum;
    let note: Vec<u8> = if pvh { pvh_note(0) } else { Vec::new() };
    let code_off = (note_off + note.len()).next_multiple_of(16);
    let data_off = code_off + c.bytes.len();
    let mut items_at = Vec::new();
    let mut data = Vec::new();
    for item in [&hello, &tick] {
        items_at.push(BASE + (data_off + data.len()) as u32);
        data.extend_from_slice(item);
    }
    for (at, item) in &c.fixups {
        let old = u32::from_le_bytes(c.bytes[*at..*at + 4].try_into().expect("4 bytes"));
        let v = items_at[*item] + old;
        c.bytes[*at..*at + 4].copy_from_slice(&v.to_le_bytes());
    }
    let entry = BASE + code_off as u32;
    let total = data_off + data.len();

    let mut f = Vec::with_capacity(total);
    // ELF header.
    f.extend_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&u64::from(entry).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // PT_LOAD: the whole file at BASE, RWX.
    phdr(&mut f, 1, 7, 0, u64::from(BASE), total as u64, 0x1000);
    if pvh {
        phdr(
            &mut f,
            4, // PT_NOTE
            4,
            note_off as u64,
            u64::from(BASE) + note_off as u64,
            note.len() as u64,
            4,
        );
        f.extend_from_slice(&pvh_note(entry));
    }
    f.resize(code_off, 0);
    f.extend_from_slice(&c.bytes);
    f.extend_from_slice(&data);
    f
}

fn phdr(f: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64) {
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&off.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    f.extend_from_slice(&size.to_le_bytes()); // p_filesz
    f.extend_from_slice(&size.to_le_bytes()); // p_memsz
    f.extend_from_slice(&align.to_le_bytes());
}

/// `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen") with a 32-bit entry.
fn pvh_note(entry: u32) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&4u32.to_le_bytes()); // namesz
    n.extend_from_slice(&4u32.to_le_bytes()); // descsz
    n.extend_from_slice(&18u32.to_le_bytes()); // type
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(&entry.to_le_bytes());
    n
}
