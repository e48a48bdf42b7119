//! How often the whole machine woke up during a transfer: context switches (`/proc/stat`
//! `ctxt`) and the interrupts that come from waking and timing work rather than from devices
//! (`/proc/interrupts`: LOC local timer, RES rescheduling IPIs, CAL function call IPIs, IWI IRQ
//! work), summed over CPUs. In a VM each of them is an exit to the hypervisor, so two machines
//! with the same CPU time can differ by how often they wake: the benchmark counts them.

use serde::Serialize;

/// Machine-wide counts since boot, or (after [`Wakeups::since`]) during a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Wakeups {
    pub context_switches: u64,
    /// Local timer interrupts.
    pub loc: u64,
    /// Rescheduling interrupts (one CPU waking a task on another).
    pub res: u64,
    /// Function call interrupts (one CPU running a function on another).
    pub cal: u64,
    /// IRQ work interrupts (work queued from a context that cannot do it, e.g. a BPF ring
    /// buffer's wakeup of its reader).
    pub iwi: u64,
}

impl Wakeups {
    /// The counts now; `None` if `/proc` cannot be read.
    pub fn read() -> Option<Wakeups> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let interrupts = std::fs::read_to_string("/proc/interrupts").ok()?;
        Some(Wakeups::parse(&stat, &interrupts))
    }

    fn parse(stat: &str, interrupts: &str) -> Wakeups {
        let context_switches = stat
            .lines()
            .find_map(|l| l.strip_prefix("ctxt "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        // "LOC:  95642  100681   Local timer interrupts": one column per CPU, then the name.
        let irq = |label: &str| -> u64 {
            interrupts
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .map(|rest| {
                    rest.split_whitespace()
                        .map_while(|n| n.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0)
        };
        Wakeups {
            context_switches,
            loc: irq("LOC:"),
            res: irq("RES:"),
            cal: irq("CAL:"),
            iwi: irq("IWI:"),
        }
    }

    /// The counts from `earlier` to `self`.
    pub fn since(&self, earlier: &Wakeups) -> Wakeups {
        Wakeups {
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
            loc: self.loc.saturating_sub(earlier.loc),
            res: self.res.saturating_sub(earlier.res),
            cal: self.cal.saturating_sub(earlier.cal),
            iwi: self.iwi.saturating_sub(earlier.iwi),
        }
    }

    /// The interrupts counted here, all four kinds.
    pub fn interrupts(&self) -> u64 {
        self.loc + self.res + self.cal + self.iwi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_cpus_and_subtract() {
        let stat = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 999 1 2\nctxt 389497\nbtime 1\n";
        let interrupts = "           CPU0       CPU1       \n \
             24:          1          0  IO-APIC   5-edge      ACPI:Ged\n\
             LOC:      95642     100681   Local timer interrupts\n\
             IWI:          4          7   IRQ work interrupts\n\
             RES:      10724      10147   Rescheduling interrupts\n\
             CAL:      52596      53473   Function call interrupts\n\
             ERR:          0\n";
        let w = Wakeups::parse(stat, interrupts);
        assert_eq!(
            w,
            Wakeups {
                context_switches: 389497,
                loc: 196323,
                res: 20871,
                cal: 106069,
                iwi: 11,
            }
        );
        assert_eq!(w.interrupts(), 196323 + 20871 + 106069 + 11);
        let later = Wakeups {
            loc: w.loc + 5,
            ..w
        };
        assert_eq!(later.since(&w).interrupts(), 5);
        assert_eq!(w.since(&later).loc, 0);
    }
}
