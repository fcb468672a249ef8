#!/bin/sh
# Prints the import graph of the crate's top-level modules (src/<m>.rs and
# src/<m>/...): "a -> b c" when a names crate::b or crate::c. Fails when the
# graph has a cycle other than through module registration: `module` (the
# ngx_module_t and its context) and `config` (the directive table, which
# names every content handler) sit on top and may be named from below only
# for registration (Module, the location configuration).
#
# Usage: tools/import-graph.sh [src-dir]
set -eu
SRC="${1:-$(cd "$(dirname "$0")/.." && pwd)/src}"
exec perl -e '
use strict; use warnings;
my $src = shift;
my %edges;
my @files = (glob("$src/*.rs"), glob("$src/*/*.rs"), glob("$src/*/*/*.rs"));
my %mods = map { m{^\Q$src\E/([a-z_0-9]+)}; ($1 =~ s/\.rs$//r) => 1 } @files;
delete $mods{lib};
for my $f (@files) {
    my ($m) = $f =~ m{^\Q$src\E/([a-z_0-9]+)};
    $m =~ s/\.rs$//;
    next if $m eq "lib";
    open my $fh, "<", $f or die "$f: $!";
    my $text = do { local $/; <$fh> };
    # Not tests: a unit test may use anything.
    $text =~ s/#\[cfg\(test\)\]\s*mod tests\s*\{.*//s;
    $text =~ s{//[^\n]*}{}g;
    while ($text =~ /\bcrate::([a-z_0-9]+)/g) {
        $edges{$m}{$1} = 1 if $mods{$1} && $1 ne $m;
    }
    # use crate::{a, b::c}
    while ($text =~ /\buse\s+crate::\{([^;]*)\};/sg) {
        my $list = $1;
        for my $name ($list =~ /(?:^|[{,]\s*)([a-z_0-9]+)/g) {
            $edges{$m}{$name} = 1 if $mods{$name} && $name ne $m;
        }
    }
}
for my $m (sort keys %mods) {
    print "$m -> ", join(" ", sort keys %{ $edges{$m} // {} }), "\n";
}
# Registration: edges into module/config are not part of the layering.
my %reg = (module => 1, config => 1);
my %g;
for my $a (keys %edges) {
    for my $b (keys %{ $edges{$a} }) {
        next if $reg{$b};
        $g{$a}{$b} = 1;
    }
}
# Tarjan: strongly connected components with more than one module.
my ($index, @stack, %on, %idx, %low, @cycles) = (0);
my $visit; $visit = sub {
    my $v = shift;
    $idx{$v} = $low{$v} = $index++;
    push @stack, $v; $on{$v} = 1;
    for my $w (sort keys %{ $g{$v} // {} }) {
        if (!defined $idx{$w}) { $visit->($w); $low{$v} = $low{$w} if $low{$w} < $low{$v} }
        elsif ($on{$w}) { $low{$v} = $idx{$w} if $idx{$w} < $low{$v} }
    }
    if ($low{$v} == $idx{$v}) {
        my @c;
        while (1) { my $w = pop @stack; $on{$w} = 0; push @c, $w; last if $w eq $v }
        push @cycles, [sort @c] if @c > 1;
    }
};
$visit->($_) for grep { !defined $idx{$_} } sort keys %mods;
if (@cycles) {
    print STDERR "import-graph: cycle among: @$_\n" for @cycles;
    exit 1;
}
print "import-graph: no cycle outside module registration\n";
' "$SRC"
